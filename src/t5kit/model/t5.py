"""The T5 encoder-decoder with a language-model head, top to bottom (T5_SPEC.md is the reference).

Pre-norm residual sublayers; one relative-position table in the first layer of each stack (every layer for
UMT5); a tied head that rescales the decoder output by d_model^-0.5 and an untied head that does not. The
decoder has ONE forward: without a cache it is the teacher-forced pass of training, with a
:class:`~t5kit.model.cache.DecoderCache` it decodes the next positions against keys/values kept from
earlier calls. Parameter names are t5kit's own; ``t5kit.checkpoint`` maps them to and from the Hugging Face
layout, so this file never knows another library's key names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from t5kit.checkpoint import io as checkpoint_io
from t5kit.config import T5Config
from t5kit.generate import RankOutput, ScoreOutput, generate, rank, score
from t5kit.ids import LABEL_PAD_ID
from t5kit.model.cache import DecoderCache
from t5kit.model.layers import Attention, Dropout, FeedForward, RMSNorm, clamp_fp16, weight_dtype
from t5kit.model.masks import Packing, bias_in, causal_bias, padding_bias, segment_bias, shift_right


class EncoderLayer(nn.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool):
        super().__init__()
        self.self_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.self_attn = Attention(config, has_relative_bias, bidirectional=True)
        self.ffn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = clamp_fp16(self.dropout.add_to(x, self.self_attn(self.self_attn_norm(x), bias)), x.dtype)
        return clamp_fp16(self.dropout.add_to(x, self.ffn(self.ffn_norm(x))), x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool):
        super().__init__()
        self.self_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.self_attn = Attention(config, has_relative_bias, bidirectional=False)
        self.cross_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.cross_attn = Attention(config, cross=True)
        self.ffn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, x: Tensor, self_bias: Tensor, memory: Tensor | None, cross_bias: Tensor | None,
                cache: DecoderCache | None = None, index: int = 0) -> Tensor:
        """One decoder layer; with ``cache`` (``index`` = this layer's number) its keys/values are cached."""
        h = self.self_attn(self.self_attn_norm(x), self_bias, cache=cache, layer=index)
        x = clamp_fp16(self.dropout.add_to(x, h), x.dtype)
        h = self.cross_attn(self.cross_attn_norm(x), cross_bias, memory, cache=cache, layer=index)
        x = clamp_fp16(self.dropout.add_to(x, h), x.dtype)
        return clamp_fp16(self.dropout.add_to(x, self.ffn(self.ffn_norm(x))), x.dtype)


class _Stack(nn.Module):
    """What the encoder and the decoder share: layers, final norm, dropout, activation checkpointing."""

    def __init__(self, config: T5Config, layer: type[nn.Module], count: int):
        super().__init__()
        per_layer = config.per_layer_position_bias
        self.layers = nn.ModuleList(layer(config, per_layer or i == 0) for i in range(count))
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)
        self.activation_checkpointing = False

    def run(self, layer: nn.Module, *args: object) -> Tensor:
        """``layer(*args)``, recomputed in backward instead of keeping its activations when checkpointing."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


class Encoder(_Stack):
    def __init__(self, config: T5Config):
        super().__init__(config, EncoderLayer, config.num_layers)

    def forward(self, embeddings: Tensor, attention_mask: Tensor, packing: Packing | None = None) -> Tensor:
        x = self.dropout(embeddings)
        length = x.shape[1]
        if packing is None:
            mask = padding_bias(attention_mask, torch.float32)
        else:
            segments, positions = packing.encoder_segment_ids, packing.encoder_positions
            mask = segment_bias(segments, segments)
        bias = None
        for layer in self.layers:
            table = layer.self_attn.relative_bias
            if table is not None:  # first layer (T5) or every layer (UMT5)
                position_bias = table(length, length) if packing is None else table.between(positions, positions)
                bias = bias_in(position_bias + mask, x.dtype)
            x = self.run(layer, x, bias)
        return self.dropout(self.final_norm(x))


class Decoder(_Stack):
    def __init__(self, config: T5Config):
        super().__init__(config, DecoderLayer, config.num_decoder_layers)

    def forward(
        self,
        embeddings: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
        packing: Packing | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Decoder states for ``embeddings`` [batch, new, d_model].

        Without ``cache``: the whole target at once over ``memory`` (the encoder output, ``memory_mask`` its
        padding), causal, or within each packed example. With ``cache``: positions ``cache.length ..`` over
        the cached keys/values; the cache then holds ``new`` more positions.
        """
        x = self.dropout(embeddings)
        new = x.shape[1]
        start = 0 if cache is None else cache.length
        end = start + new
        if cache is not None and end > cache.max_length:
            raise ValueError(f"decoder cache holds {cache.max_length} positions; this step would reach {end}")
        if packing is not None:
            segments, positions = packing.decoder_segment_ids, packing.decoder_positions
            mask = segment_bias(segments, segments, causal=True)
            cross_bias = bias_in(segment_bias(segments, packing.encoder_segment_ids), x.dtype)
        elif cache is not None and new == 1:  # one step sees every cached position: no mask to build
            mask = cross_bias = None
        else:
            mask = causal_bias(new, end, start, x.device)[None, None]
            if attention_mask is not None:
                mask = mask + padding_bias(attention_mask, torch.float32)
            cross_bias = None if cache is not None else bias_in(padding_bias(memory_mask, torch.float32), x.dtype)
        bias = None
        for i, layer in enumerate(self.layers):
            table = layer.self_attn.relative_bias
            if table is not None:
                if cache is not None and new == 1:  # one step: a slice of the table the cache precomputed
                    bias = cache.self_bias_by_distance[i if len(cache.self_bias_by_distance) > 1 else 0]
                    bias = bias[None, :, None, -end:]
                    if cache.self_mask is not None:  # rows that joined later do not see the columns before them
                        bias = bias + cache.self_mask[:, None, None, :end]
                elif packing is not None:
                    bias = bias_in(table.between(positions, positions) + mask, x.dtype)
                else:
                    bias = bias_in(table(new, end, query_offset=start) + mask, x.dtype)
            x = self.run(layer, x, bias, memory, cross_bias, cache, i)
        if cache is not None:
            cache.advance(new)
        return self.dropout(self.final_norm(x))


@dataclass
class Seq2SeqOutput:
    logits: Tensor
    loss: Tensor | None = None
    encoder_hidden_states: Tensor | None = None


class T5Model(nn.Module):
    """T5 encoder-decoder with a language-model head.

    ``forward`` is the teacher-forced pass used in training; ``encode`` gives the encoder's hidden states
    (useful as text embeddings); ``new_cache`` + ``decode_step`` are the incremental path that decoding
    (:mod:`t5kit.generate`) builds on.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        self.reset_parameters()

    # --------------------------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, name: str, **overrides) -> T5Model:
        return cls(T5Config.from_preset(name, **overrides))

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device: str | torch.device = "cpu", revision: str | None = None) -> T5Model:
        """Load a Hugging Face layout checkpoint (directory or hub repo id); see ``t5kit.checkpoint``.

        ``dtype``: None -> float32 (as the reference loads), ``"auto"`` -> as stored, or fp32/bf16/fp16.
        Missing, unexpected and mis-shaped tensors are reported by name with both shapes.
        """
        config, state = checkpoint_io.read_checkpoint(path_or_repo_id, dtype=dtype, device=device, revision=revision)
        with torch.device("meta"):
            model = cls(config)
        checkpoint_io.check_state_dict(state, {n: p.shape for n, p in model.named_parameters()}, path_or_repo_id)
        if config.tie_word_embeddings:  # assign=True gives each name its own Parameter: tie them again after
            state["lm_head.weight"] = state["shared.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.shared.weight
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int | str | None = None) -> None:
        """Write config.json and model.safetensors (sharded above ``max_shard_size``) atomically."""
        checkpoint_io.write_checkpoint(directory, self.config, self.state_dict(), tied=self.tied,
                                       max_shard_size=max_shard_size)

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.shared.weight

    def untie(self) -> None:
        """Give the head its own copy of the embedding matrix."""
        if self.tied:
            self.lm_head.weight = nn.Parameter(self.shared.weight.detach().clone())
            self.config.tie_word_embeddings = False
            if self.config.scale_decoder_outputs is None:
                self.config.scale_decoder_outputs = True

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (Mesh TensorFlow's), scaled by ``initializer_factor``."""
        c = self.config
        f = c.initializer_factor
        nn.init.normal_(self.shared.weight, std=f * 1.0)
        if not self.tied:
            nn.init.normal_(self.lm_head.weight, std=f * 1.0)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(f * 1.0)
            elif isinstance(module, Attention):
                nn.init.normal_(module.q.weight, std=f * (c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.v.weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.o.weight, std=f * c.inner_dim**-0.5)
                if module.relative_bias is not None:
                    nn.init.normal_(module.relative_bias.weight, std=f * c.d_model**-0.5)
            elif isinstance(module, FeedForward):
                for name in ("wi", "wi_0", "wi_1"):
                    if hasattr(module, name):
                        nn.init.normal_(getattr(module, name).weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=f * c.d_ff**-0.5)

    def set_dtype(self, dtype: torch.dtype) -> T5Model:
        """Cast to ``dtype``; in float16 the feed-forward output projections stay float32 (overflow), by the
        checkpoint loader's rule (``t5kit.checkpoint.io.keeps_fp32_in_fp16``)."""
        self.to(dtype)
        if dtype == torch.float16:
            for name, parameter in self.named_parameters():
                if checkpoint_io.keeps_fp32_in_fp16(name):
                    parameter.data = parameter.data.float()
        return self

    def set_dropout(self, rate: float) -> None:
        """Set every dropout rate of the model (and its config)."""
        self.config.dropout_rate = rate
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = rate

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder/decoder layer in the backward pass instead of keeping its activations."""
        self.encoder.activation_checkpointing = self.decoder.activation_checkpointing = enabled

    @property
    def dtype(self) -> torch.dtype:
        return self.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.shared.weight.device

    def num_parameters(self, unique: bool = True) -> int:
        params = self.parameters() if unique else (p for _, p in self.named_parameters(remove_duplicate=False))
        return sum(p.numel() for p in params)

    # --------------------------------------------------------------------------------- passes
    def _check_ids(self, ids: Tensor, name: str) -> None:
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape [batch, length], got {tuple(ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"{name} holds ids outside [0, {self.config.vocab_size}): min {int(ids.min())}, max {int(ids.max())}; "
                "was the text encoded with this model's tokenizer?"
            )

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings (the table both stacks share)."""
        return self.shared(ids)

    def lm_logits(self, decoder_hidden: Tensor) -> Tensor:
        """Vocabulary logits of decoder states; a tied head first rescales them by d_model^-0.5."""
        if self.config.rescale_decoder_output:
            decoder_hidden = decoder_hidden * (self.config.d_model**-0.5)
        return self.lm_head(decoder_hidden.to(weight_dtype(self.lm_head, decoder_hidden.dtype)))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Token-mean cross entropy in float32 (float64 for float64 logits) of ``logits`` [N, vocab] against
        ``labels`` [N] (-100 ignored)."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return F.cross_entropy(logits.to(dtype), labels, ignore_index=LABEL_PAD_ID)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encoder hidden states [batch, length, d_model] (after the final norm)."""
        self._check_ids(input_ids, "input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.encoder(self.embed(input_ids), attention_mask)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_segment_ids: Tensor | None = None,
        encoder_positions: Tensor | None = None,
        decoder_segment_ids: Tensor | None = None,
        decoder_positions: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Teacher-forced pass. With ``labels`` and no decoder inputs, the labels are shifted right.

        Returns logits [batch, target_length, vocab] and, with labels, the token-mean cross entropy
        (label -100 ignored), computed in float32.

        Packed rows (several short examples per row, as ``t5kit.data.Collator(pack=True)`` makes them) pass
        the four ``*_segment_ids`` / ``*_positions`` tensors and their own ``decoder_input_ids``: attention
        then stays within each example and relative positions restart at each, so a packed example gets
        the same outputs as it would alone.
        """
        packing = None
        packed = (encoder_segment_ids, encoder_positions, decoder_segment_ids, decoder_positions)
        given = [t is not None for t in packed]
        if any(given):
            if not all(given) or decoder_input_ids is None:
                raise ValueError("packed batches need encoder_segment_ids, encoder_positions, decoder_segment_ids, "
                                 "decoder_positions and decoder_input_ids together")
            packing = Packing(encoder_segment_ids, encoder_positions, decoder_segment_ids, decoder_positions)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        self._check_ids(decoder_input_ids, "decoder_input_ids")
        decoder_embeddings = None
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids (or encoder_hidden_states)")
            self._check_ids(input_ids, "input_ids")
            if packing is not None:
                attention_mask = (encoder_segment_ids > 0).long()
            elif attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            # One lookup for both sides: the embedding's backward then fills and scatters into one dense
            # vocab x d_model gradient instead of two that autograd must add up.
            n = input_ids.numel()
            both = self.embed(torch.cat((input_ids.reshape(-1), decoder_input_ids.reshape(-1))))
            encoder_embeddings = both[:n].view(*input_ids.shape, -1)
            decoder_embeddings = both[n:].view(*decoder_input_ids.shape, -1)
            encoder_hidden_states = self.encoder(encoder_embeddings, attention_mask, packing)
        if attention_mask is None:
            attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long,
                                        device=encoder_hidden_states.device)
        if decoder_embeddings is None:
            decoder_embeddings = self.embed(decoder_input_ids)
        hidden = self.decoder(decoder_embeddings, encoder_hidden_states, attention_mask,
                              decoder_attention_mask, packing)
        logits = self.lm_logits(hidden)
        loss = None if labels is None else self.loss(logits.flatten(0, 1), labels.flatten())
        return Seq2SeqOutput(logits=logits, loss=loss, encoder_hidden_states=encoder_hidden_states)

    # --------------------------------------------------------------------------------- incremental decoding
    def new_cache(
        self, encoder_hidden_states: Tensor, attention_mask: Tensor | None = None, max_length: int = 512
    ) -> DecoderCache:
        """A cache for decoding up to ``max_length`` decoder positions against these encoder states.

        Cross-attention keys/values are computed here, once.
        """
        batch, source_length, _ = encoder_hidden_states.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, source_length, dtype=torch.long, device=encoder_hidden_states.device)
        layers = self.decoder.layers
        cross = [layer.cross_attn for layer in layers]
        tables = [layer.self_attn.relative_bias for layer in layers if layer.self_attn.relative_bias is not None]
        return DecoderCache.allocate(
            cross_k=[c.heads(c.k(encoder_hidden_states)) for c in cross],
            cross_v=[c.heads(c.v(encoder_hidden_states)) for c in cross],
            cross_bias=bias_in(padding_bias(attention_mask, torch.float32), self.dtype),
            self_bias_by_distance=[t.by_distance(max_length).to(self.dtype) for t in tables],
            max_length=max_length,
        )

    def decode_step(self, decoder_input_ids: Tensor, cache: DecoderCache) -> Tensor:
        """Logits [batch, new, vocab] for the new decoder positions; the cache grows by ``new``."""
        return self.lm_logits(self.decoder(self.embed(decoder_input_ids), cache=cache))

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options):
        """Greedy, sampled or beam-search generation: see :func:`t5kit.generate.generate` for the options."""
        return generate(self, input_ids, attention_mask, **options)

    def score(self, input_ids: Tensor | None, attention_mask: Tensor | None, labels: Tensor,
              labels_mask: Tensor | None = None, *, encoder_hidden_states: Tensor | None = None) -> ScoreOutput:
        """Per-token, summed and mean log-likelihood of ``labels`` (right-padded with -100): see
        :func:`t5kit.generate.score`."""
        return score(self, input_ids, attention_mask, labels, labels_mask, encoder_hidden_states=encoder_hidden_states)

    def rank(self, input_ids: Tensor, attention_mask: Tensor | None, candidates: list[list[list[int]]],
             normalize: str = "sum") -> list[RankOutput]:
        """Candidate targets of each source scored and ranked, the encoder run once per source: see
        :func:`t5kit.generate.rank`."""
        return rank(self, input_ids, attention_mask, candidates, normalize=normalize)
