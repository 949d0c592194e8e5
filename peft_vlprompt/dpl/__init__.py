"""DPL (Huang et al., IJCAI 2025): search per-layer prefix-prompt lengths with a supernet, export the argmax as a
`DeepPromptConfig(mode="prefix")`, then train that configuration with the normal loop.

The supernet itself is the peft method `dpl` (`peft_vlprompt.tuners.dpl.DPLSearchConfig`); this package holds the
search loop and the export.
"""

from .batches import CyclingLoader, pass_order, search_loader
from .export import ALPHAS_FILE, FOUND_FILE, alpha_summary, found_config, save_search_result
from .search import DPLSearch, DPLSearchArguments, latest_checkpoint, prompt_lr

__all__ = [
    "ALPHAS_FILE",
    "FOUND_FILE",
    "CyclingLoader",
    "DPLSearch",
    "DPLSearchArguments",
    "alpha_summary",
    "found_config",
    "latest_checkpoint",
    "pass_order",
    "prompt_lr",
    "save_search_result",
    "search_loader",
]
