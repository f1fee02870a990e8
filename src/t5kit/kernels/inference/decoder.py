"""A decoder layer whose decoding steps run natively (replaces :meth:`t5kit.model.t5.DecoderLayer.forward` in
decoding steps): the whole layer in one call of ``decoder_step.c`` where it can, else each residual add and the
RMS norm after it in one call of ``norm.c``.

In a one-row decoding step the matrix products are the work and everything between them is dispatch. A plain
decoder layer runs three residual adds and three RMS norms of five operations each, ~20 small PyTorch
operations of several microseconds each, more right after a large product has left the caches cold (one norm
of a [1, 512] row: 10 us alone, 69 us after a 512 -> 2048 linear; see ``norm.py``); with those in ``norm.c``
(``native.add_rms_norm``), a t5-small greedy step on a 2-core AMD EPYC (Zen 4) still spent ~2 ms of ~9 in
Python and PyTorch between its native products (py-spy). The whole-layer step (``native.decoder_layer``)
calls the same products, attention and norms from C: one ctypes call per layer.

Only a step with a cache takes these paths, with float32 activations (fp32, fp16-weight and int8-weight modes)
and at most :data:`SMALL_ROWS` rows: a prompt, training, scoring and the encoder keep the plain layer and its
rounding. The norm rounds in another order than the reference (its sum of squares in double), the products in
the native kernels' order: tests/kernels/test_decoder_step.py and test_decoder_layer_step.py bound both
against float64.

The whole-layer step needs every linear layer of the decoder layer served by a native kernel at the step's row
bucket (:func:`t5kit.kernels.inference.linear.native_kernel`: the one chosen for it, or the gemv kernel of its
format standing in, and then the whole step must have been timed faster than the per-norm path), no bias or
adapter, a relu or tanh-GELU feed-forward, and the step's tensors in the layouts the kernel reads; anything
else takes the per-norm path. :class:`InferenceDecoder` calls the layers' steps with arguments built once per
cache.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.compiler import is_compiling as compiling

from t5kit.kernels.inference import linear, native
from t5kit.model.cache import DecoderCache
from t5kit.model.layers import gelu_tanh
from t5kit.model.masks import Packing
from t5kit.model.t5 import Decoder, DecoderLayer

# A decoding step's rows: 1 per sequence (beams included); the gemv kernels' largest bucket is the same 16.
SMALL_ROWS = 16
_BUCKET_OF = [linear.bucket(rows) for rows in range(SMALL_ROWS + 1)]
# decoder_step.c's code for the feed-forward's activation (its product kernels': native.PRODUCT_KERNELS)
ACTIVATION_CODES = {F.relu: 0, gelu_tanh: 1}
# the layer's __dict__: {bucket: (the choices' generation, the weights watched, _StepPlan or None)}: a new choice, a
# weight replaced or changed in place builds anew (uninstall drops them: forget_step_plans)
PLANS = "_t5kit_layer_step"
STACK = "_t5kit_decoder_step"  # a decoder's __dict__: (cache key, the layers' plans, per-layer arguments or None)


@dataclass
class _StepPlan:
    """What a whole-layer step of one row bucket reads that does not change between steps."""

    template: list[int]  # decoder_step.c's argument array with every static entry filled
    keep: list[Any]  # the packs the template's addresses point into, alive as long as the plan


def _product_args(kernel: str, packed: Any, module: torch.nn.Linear) -> tuple[list[int], list[Any]]:
    """(kind, weight, scale, n, k) of one product for decoder_step.c, and the tensors they address."""
    _, prepared = packed  # (library, what the kernel's pack made)
    n, k = module.out_features, module.in_features
    if kernel == "avx2-gemv-int8":
        values, scale = prepared
        return [native.PRODUCT_KERNELS[kernel], values.data_ptr(), scale.data_ptr(), n, k], [values, scale]
    if kernel in ("avx2-packed", "avx2-packed-fp16"):
        blocks, _ = prepared
        return [native.PRODUCT_KERNELS[kernel], blocks.data_ptr(), 0, n, k], [blocks]
    return [native.PRODUCT_KERNELS[kernel], prepared.data_ptr(), 0, n, k], [prepared]


def forget_step_plans(module: torch.nn.Module) -> None:
    """Drop a decoder layer's whole-step plans, a decoder's step arguments (``t5kit.kernels.uninstall``)."""
    module.__dict__.pop(PLANS, None)
    module.__dict__.pop(STACK, None)


class InferenceDecoderLayer(DecoderLayer):
    """:class:`DecoderLayer` whose decoding steps run the whole layer in one native call where it can, else each
    residual add and the norm after it in one call."""

    def _slots(self) -> list[tuple[torch.nn.Module, str]]:
        """(parent, name) of the nine products' linear layers, in decoder_step.c's order (wi twice without a gate:
        the second slot is unused)."""
        a, c, ffn = self.self_attn, self.cross_attn, self.ffn
        first = [(ffn, "wi_0"), (ffn, "wi_1")] if ffn.gated else [(ffn, "wi"), (ffn, "wi")]
        return [(a, "q"), (a, "k"), (a, "v"), (a, "o"), (c, "q"), (c, "o"), *first, (ffn, "wo")]

    def _linears(self) -> list[torch.nn.Module]:
        return [parent._modules[name] for parent, name in self._slots()]

    def step_paths(self) -> str:
        """Which path a decoding step of each row bucket takes (for ``linear.summary``: ``t5kit info --backend``
        and the server's start): the whole layer in one native call, or the modules."""
        return linear.bucket_spans(
            (rows, "whole layer native" if native.library() and self._step_plan(rows) else "modules")
            for rows in sorted(set(_BUCKET_OF[1:])))

    def _watched(self) -> list[tuple[dict, str, Any, int | None]]:
        """What a plan was built from, as (the dict holding it, its name, the object, its version or None): the
        linear layers themselves (an adapter may replace one), their stored weights and the norms' weights."""
        found: list[tuple[dict, str, Any, int | None]] = [
            (norm._parameters, "weight", norm.weight, norm.weight._version)
            for norm in (self.self_attn_norm, self.cross_attn_norm, self.ffn_norm)]
        for parent, name in self._slots():
            module = parent._modules[name]
            found.append((parent._modules, name, module, None))
            for holder, attribute in ((module._parameters, "weight"), (module._buffers, "weight_fp16"),
                                      (module._buffers, "weight_int8")):
                tensor = holder.get(attribute)
                if tensor is not None:
                    found.append((holder, attribute, tensor, tensor._version))
        return found

    def _build_plan(self, key: int) -> _StepPlan | None:
        attn, ffn = self.self_attn, self.ffn
        products, keep, stand_ins = [], [], []
        for module in self._linears():
            found = linear.native_kernel(module, key)  # None for anything but a plain inference linear
            if found is None or module.bias is not None:
                return None
            kernel, packed, stands_in = found
            args, tensors = _product_args(kernel, packed, module)
            products += args
            keep += tensors
            stand_ins.append(stands_in)
        activation = ACTIVATION_CODES.get(ffn.act)
        if any(norm.weight.dtype != torch.float32 for norm in (self.self_attn_norm, self.cross_attn_norm,
                                                               self.ffn_norm)):
            return None
        d_model, d_ff = attn.q.in_features, ffn.wo.in_features
        shapes = [(attn.num_heads * attn.d_kv, d_model)] * 3 + [(d_model, attn.num_heads * attn.d_kv)]
        shapes += [(attn.num_heads * attn.d_kv, d_model), (d_model, attn.num_heads * attn.d_kv)]
        shapes += [(d_ff, d_model)] * 2 + [(d_model, d_ff)]
        if (activation is None or (self.cross_attn.num_heads, self.cross_attn.d_kv) != (attn.num_heads, attn.d_kv)
                or [(m.out_features, m.in_features) for m in self._linears()] != shapes):
            return None
        norms = (self.self_attn_norm, self.cross_attn_norm, self.ffn_norm)
        template = [0] * native.DECODER_LAYER_ARGS
        template[3:7] = [d_model, attn.num_heads, attn.d_kv, d_ff]
        template[8:10] = [int(ffn.gated), activation]
        template[10] = struct.unpack("q", struct.pack("d", float(self.ffn_norm.eps)))[0]  # the double's bits
        template[11:14] = [norm.weight.data_ptr() for norm in norms]
        template[14:59] = products
        plan = _StepPlan(template, keep + [norm.weight for norm in norms])
        return plan if not any(stand_ins) or self._step_pays(key, plan) else None

    def _step_pays(self, rows: int, plan: _StepPlan) -> bool:
        """Whether ``plan``, whose gemv kernels stand in for faster kernels chosen elsewhere, beats the per-norm
        path over the modules: timed once per machine and layer shape at ``rows``' bucket, the two taking turns
        (the kernels' own timings leave out the ~300 us of dispatch a t5-small layer's step saves, and measured
        cache-hot they favoured fbgemm's int8 feed-forward products, 30 against 48 us, where in a one-row
        step streaming from DRAM the whole step with gemv was 1.6x faster end to end on a 2-core AMD EPYC)."""
        attn, ffn = self.self_attn, self.ffn
        formats = "+".join(sorted({m.storages()[0] for m in self._linears()}))
        key = (f"decoder step {formats} d_model {attn.q.in_features} heads {attn.num_heads}x{attn.d_kv} d_ff "
               f"{ffn.wo.in_features} {'gated ' if ffn.gated else ''}{ffn.act.__name__} rows {rows}")
        entry = linear.cached_choice(key)
        if entry is None or not isinstance(entry.get("whole"), bool):
            timings = self._time_steps(rows, plan)
            entry = {"whole": timings["whole"] < timings["per-norm"], "us": timings}
            linear.remember_choice(key, entry)
        return entry["whole"]

    def _time_steps(self, rows: int, plan: _StepPlan, rounds: int = 5, calls: int = 3) -> dict[str, float]:
        """Best microseconds per step of this layer, whole and per-norm, on a synthetic step: ``rows`` rows, 32
        cached positions, 64 source positions."""
        attn, lib = self.self_attn, native.library()
        g = torch.Generator().manual_seed(0)
        heads, d_kv, start, source = attn.num_heads, attn.d_kv, 32, 64
        cache = DecoderCache(self_kv=torch.randn(2, rows, heads, start + 1, d_kv, generator=g),
                             cross_k=[torch.randn(rows, heads, source, d_kv, generator=g)],
                             cross_v=[torch.randn(rows, heads, source, d_kv, generator=g)],
                             cross_bias=torch.zeros(rows, 1, 1, source), length=start,
                             self_bias_by_distance=[torch.randn(heads, start + 1, generator=g)])
        bias = cache.self_bias_by_distance[0][None, :, None, :]
        x = torch.randn(rows, 1, attn.q.in_features, generator=g)
        paths = {"whole": lambda: self._whole_step(x, bias, cache, 0, plan),
                 "per-norm": lambda: self._per_norm_step(lib, x, bias, None, None, cache, 0)}
        best = dict.fromkeys(paths, float("inf"))
        with torch.no_grad():
            for path in paths.values():
                path()
            for _ in range(rounds):
                for name, path in paths.items():
                    began = time.perf_counter()
                    for _ in range(calls):
                        path()
                    best[name] = min(best[name], (time.perf_counter() - began) / calls)
        return {name: round(t * 1e6, 1) for name, t in best.items()}

    def _step_plan(self, rows: int) -> _StepPlan | None:
        key = _BUCKET_OF[rows]
        plans = self.__dict__.get(PLANS)
        held = None if plans is None else plans.get(key)
        # checked at every step, so kept to dictionary lookups: ~4 us for a t5-small layer (an attribute walk
        # through nn.Module.__getattr__ and data_ptr() calls took 54 us, 6% of an int8 step)
        if (held is None or held[0] != linear.choices_generation()
                or not all(holder.get(name) is held_object and (version is None or held_object._version == version)
                           for holder, name, held_object, version in held[1])):
            generation, watched = linear.choices_generation(), self._watched()
            held = (generation, watched, self._build_plan(key))
            self.__dict__.setdefault(PLANS, {})[key] = held
        return held[2]

    def _whole_step(self, x: Tensor, self_bias: Tensor | None, cache: DecoderCache, index: int,
                    plan: _StepPlan | None = None) -> Tensor | None:
        """The layer's step in one native call (by ``plan``, else this bucket's), or None where its conditions do
        not hold."""
        x = x.contiguous()
        out = torch.empty_like(x)
        args = self._step_args(x, out, self_bias, cache, index, plan)
        if args is None:
            return None
        native.decoder_layer(native.library(), args)
        return out

    def _step_args(self, x: Tensor, out: Tensor, self_bias: Tensor | None, cache: DecoderCache, index: int,
                   plan: _StepPlan | None = None) -> list[int] | None:
        """decoder_step.c's arguments for a step of contiguous ``x`` into ``out``, or None where its conditions
        do not hold."""
        rows = x.shape[0]
        lib = native.library()
        if lib is None or x.dim() != 3 or x.shape[1] != 1 or len({n.eps for n in (
                self.self_attn_norm, self.cross_attn_norm, self.ffn_norm)}) != 1:
            return None
        keys_k, keys_v = cache.self_k[index], cache.self_v[index]
        cross_k, cross_v = cache.cross_k[index], cache.cross_v[index]
        start, beams = cache.length, cache.beams
        source = cross_k.shape[2]
        cross_bias = cache.cross_bias
        if (start + 1 > keys_k.shape[2] or max(start + 1, source) > lib.max_keys
                or any(t.dtype != torch.float32 or t.stride(-1) != 1 for t in (keys_k, keys_v, cross_k, cross_v))
                or rows % beams or cross_k.shape[0] * beams != rows or keys_k.shape[0] != rows
                or keys_k.shape[1] != self.self_attn.num_heads or keys_k.shape[3] != self.self_attn.d_kv):
            return None
        biases = []
        for bias, keys in ((self_bias, start + 1), (cross_bias, source)):
            if bias is None:
                biases += [0, 0, 0, 0, 0]
                continue
            if bias.dtype != torch.float32 or bias.dim() != 4 or bias.shape[-1] != keys or bias.shape[2] != 1:
                return None
            # a batch, head or query dimension of size 1 is broadcast (stride 0); the key dimension keeps its stride,
            # so arguments built at one key serve every later step (InferenceDecoder)
            strides = [0 if size == 1 else stride for size, stride in zip(bias.shape[:3], bias.stride()[:3])]
            biases += [bias.data_ptr(), *strides, bias.stride(3)]
        plan = plan or self._step_plan(rows)
        if plan is None:
            return None
        args = list(plan.template)
        args[0:3] = [x.data_ptr(), out.data_ptr(), rows]
        args[7] = torch.get_num_threads()
        ks, vs = keys_k.stride(), keys_v.stride()
        args[59:68] = [keys_k.data_ptr(), ks[0], ks[1], ks[2], keys_v.data_ptr(), vs[0], vs[1], vs[2], start]
        args[68:73] = biases[:5]
        cks, cvs = cross_k.stride(), cross_v.stride()
        args[73:83] = [cross_k.data_ptr(), cks[0], cks[1], cks[2], cross_v.data_ptr(), cvs[0], cvs[1], cvs[2], source,
                       beams]
        args[83:88] = biases[5:]
        return args

    def forward(self, x: Tensor, self_bias: Tensor, memory: Tensor | None, cross_bias: Tensor | None,
                cache: DecoderCache | None = None, index: int = 0) -> Tensor:
        norms = (self.self_attn_norm, self.cross_attn_norm, self.ffn_norm)
        if (cache is None or x.dtype != torch.float32 or x.device.type != "cpu"
                or x.numel() > SMALL_ROWS * x.shape[-1] or torch.is_grad_enabled()
                or (self.training and self.dropout.p) or compiling()
                or any(norm.weight.dtype != torch.float32 for norm in norms)):
            return super().forward(x, self_bias, memory, cross_bias, cache, index)
        lib = native.library()
        if lib is None:
            return super().forward(x, self_bias, memory, cross_bias, cache, index)
        whole = self._whole_step(x, self_bias, cache, index)
        if whole is not None:
            return whole
        return self._per_norm_step(lib, x, self_bias, memory, cross_bias, cache, index)

    def _per_norm_step(self, lib: native._Library, x: Tensor, self_bias: Tensor, memory: Tensor | None,
                       cross_bias: Tensor | None, cache: DecoderCache, index: int) -> Tensor:
        """The step through the modules, each residual add and the norm after it in one native call."""
        first, cross, ffn = self.self_attn_norm, self.cross_attn_norm, self.ffn_norm
        x = x.contiguous()
        _, normed = native.add_rms_norm(lib, x, None, first.weight, first.eps)
        h = self.self_attn(normed, self_bias, cache=cache, layer=index)
        x, normed = native.add_rms_norm(lib, x, h.contiguous(), cross.weight, cross.eps)
        h = self.cross_attn(normed, cross_bias, memory, cache=cache, layer=index)
        x, normed = native.add_rms_norm(lib, x, h.contiguous(), ffn.weight, ffn.eps)
        return x + self.ffn(normed)

    def __getstate__(self) -> dict:  # the plans hold addresses: rebuilt on first use
        return {k: v for k, v in self.__dict__.items() if k != PLANS}

    def __deepcopy__(self, memo: dict) -> InferenceDecoderLayer:
        return linear.copy_without(self, (PLANS,), memo)


class InferenceDecoder(Decoder):
    """:class:`Decoder` whose one-position decoding steps run every layer's native step (decoder_step.c) with
    arguments built once per cache, patched per step (the position, the bias column, the buffers): the Python
    between the native layer calls of a t5-small fp32 step took 0.51 ms of 6.1 (85 us a layer; 2-core AMD EPYC
    Zen 4). Anything else, and a cache whose rows joined at different steps (continuous batching: a per-row
    mask), goes through the layers one by one (each of which may still take its own native step)."""

    def _stack(self, x: Tensor, cache: DecoderCache) -> list[tuple[list[int], int, int]] | None:
        """Per layer (its arguments, the address of its bias table or 0, the table's length), or None."""
        rows = x.shape[0]
        plans = [layer._step_plan(rows) if isinstance(layer, InferenceDecoderLayer) else None
                 for layer in self.layers]
        if any(plan is None for plan in plans):
            return None
        tables = cache.self_bias_by_distance
        key = (id(cache), rows, cache.beams, cache.self_kv.data_ptr(), tuple(cache.self_kv.shape),
               tuple(cache.cross_k[0].shape), cache.cross_bias.data_ptr(),
               *(t.data_ptr() for t in (*cache.cross_k, *cache.cross_v, *tables)))
        held = self.__dict__.get(STACK)
        if held is None or held[0] != key or any(p is not q for p, q in zip(plans, held[1])):
            held = (key, plans, self._build_stack(x, cache, plans))
            self.__dict__[STACK] = held
        return held[2]

    def _build_stack(self, x: Tensor, cache: DecoderCache, plans: list) -> list | None:
        tables, end, table = cache.self_bias_by_distance, cache.length + 1, None
        stack = []
        for i, (layer, plan) in enumerate(zip(self.layers, plans)):
            if layer.self_attn.relative_bias is not None:  # as Decoder.forward: the last table seen serves
                table = tables[i if len(tables) > 1 else 0]
            if table is not None and (table.dtype != torch.float32 or not table.is_contiguous()):
                return None
            bias = None if table is None else table[None, :, None, -end:]
            args = layer._step_args(x, x, bias, cache, i, plan)
            if args is None:
                return None
            stack.append((args, 0 if table is None else table.data_ptr(), 0 if table is None else table.shape[1]))
        return stack

    def forward(self, embeddings: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None,
                attention_mask: Tensor | None = None, packing: Packing | None = None,
                cache: DecoderCache | None = None) -> Tensor:
        lib = native.library()
        if (cache is None or packing is not None or attention_mask is not None or lib is None
                or embeddings.dim() != 3 or embeddings.shape[1] != 1 or embeddings.shape[0] > SMALL_ROWS
                or embeddings.dtype != torch.float32 or embeddings.device.type != "cpu" or torch.is_grad_enabled()
                or (self.training and self.dropout.p) or compiling() or cache.self_mask is not None
                or cache.length + 1 > min(cache.max_length, lib.max_keys)):
            return super().forward(embeddings, memory, memory_mask, attention_mask, packing, cache)
        x = embeddings.contiguous()
        stack = self._stack(x, cache)
        if stack is None:
            return super().forward(embeddings, memory, memory_mask, attention_mask, packing, cache)
        start, threads = cache.length, torch.get_num_threads()
        for args, table, length in stack:
            out = torch.empty_like(x)
            call = list(args)  # the held arguments stay as built: another thread may decode with this model
            call[0], call[1], call[7], call[67] = x.data_ptr(), out.data_ptr(), threads, start
            if table:
                call[68] = table + 4 * (length - start - 1)  # the bias columns of keys 0 .. start
            native.decoder_layer(lib, call)
            x = out
        cache.advance(1)
        return self.dropout(self.final_norm(x))

    def __getstate__(self) -> dict:  # the arguments hold addresses: rebuilt on first use
        return {k: v for k, v in self.__dict__.items() if k != STACK}

    def __deepcopy__(self, memo: dict) -> InferenceDecoder:
        return linear.copy_without(self, (STACK,), memo)
