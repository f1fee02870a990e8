"""Importers that build datasets from text already on a Debian machine (see ``t5kit data import``)."""

from t5kit.data.corpora.common import split_by_package, split_of
from t5kit.data.corpora.ddtp import import_ddtp
from t5kit.data.corpora.gettext import import_gettext, read_mo, strip_accelerators
from t5kit.data.corpora.text import import_text
from t5kit.data.corpora.wordnet import import_wordnet

__all__ = ["import_ddtp", "import_gettext", "import_text", "import_wordnet", "read_mo", "split_by_package",
           "split_of", "strip_accelerators"]
