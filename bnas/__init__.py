"""bnas: neural architecture search for binary networks (1-bit weights, 1-bit activations)."""
__version__ = "0.1.0"

from .model import build_model  # noqa: E402
from .profile import profile  # noqa: E402  (the function; the module is bnas.profile in sys.modules)

__all__ = ["__version__", "build_model", "profile"]
