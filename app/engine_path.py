"""Imported first by Home.py: in a checkout, put the repository root on ``sys.path``.

``streamlit run app/Home.py`` puts only ``app/`` on the path, so from any folder but the repository root
``llpf_core`` was not importable. A checkout's dashboard runs the checkout's engine; an installed dashboard
(inside the installed ``llpf_core``) has no ``llpf_core/`` beside ``app/`` and leaves the path alone.
"""
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "llpf_core" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))
