"""What a model card says about each method: its family (which template), a one-line summary and the papers to cite.

Keys are `config.peft_type` lower-cased. A method missing here gets the generic card; adding one is one entry.
"""

from dataclasses import dataclass, field

# BibTeX written from the venues and authors in docs/reference (no page numbers, no invented fields).
BIBTEX = {
    "coop": """@article{zhou2022coop,
  title   = {Learning to Prompt for Vision-Language Models},
  author  = {Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  journal = {International Journal of Computer Vision (IJCV)},
  year    = {2022}
}""",
    "cocoop": """@inproceedings{zhou2022cocoop,
  title     = {Conditional Prompt Learning for Vision-Language Models},
  author    = {Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}""",
    "prograd": """@inproceedings{zhu2023prograd,
  title     = {Prompt-aligned Gradient for Prompt Tuning},
  author    = {Zhu, Beier and Niu, Yulei and Han, Yucheng and Wu, Yue and Zhang, Hanwang},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023},
  note      = {arXiv:2205.14865}
}""",
    "kgcoop": """@inproceedings{yao2023kgcoop,
  title     = {Visual-Language Prompt Tuning with Knowledge-guided Context Optimization},
  author    = {Yao, Hantao and Zhang, Rui and Xu, Changsheng},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}""",
    "vpt": """@inproceedings{jia2022vpt,
  title     = {Visual Prompt Tuning},
  author    = {Jia, Menglin and Tang, Luming and Chen, Bor-Chun and Cardie, Claire and Belongie, Serge and
               Hariharan, Bharath and Lim, Ser-Nam},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022}
}""",
    "maple": """@inproceedings{khattak2023maple,
  title     = {MaPLe: Multi-modal Prompt Learning},
  author    = {Khattak, Muhammad Uzair and Rasheed, Hanoona and Maaz, Muhammad and Khan, Salman and
               Khan, Fahad Shahbaz},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}""",
    "promptsrc": """@inproceedings{khattak2023promptsrc,
  title     = {Self-regulating Prompts: Foundational Model Adaptation without Forgetting},
  author    = {Khattak, Muhammad Uzair and Wasim, Syed Talal and Naseer, Muzammal and Khan, Salman and
               Yang, Ming-Hsuan and Khan, Fahad Shahbaz},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023}
}""",
    "restore": """@article{yang2024restore,
  title   = {RESTORE: Towards Feature Shift for Vision-Language Prompt Learning},
  author  = {Yang, Yuncheng and Zhang, Chuyan and Yang, Zuopeng and Gao, Yuting and Qin, Yulei and Li, Ke and
             Sun, Xing and Yang, Jie and Gu, Yun},
  journal = {arXiv preprint arXiv:2403.06136},
  year    = {2024}
}""",
    "dpl": """@inproceedings{huang2025dpl,
  title     = {Differentiable Prompt Learning for Vision Language Models},
  author    = {Huang, Zhenhan and Pedapati, Tejaswini and Chen, Pin-Yu and Gao, Jianxi},
  booktitle = {International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2025},
  note      = {arXiv:2501.00457}
}""",
    "clip_lora": """@inproceedings{zanella2024cliplora,
  title     = {Low-Rank Few-Shot Adaptation of Vision-Language Models},
  author    = {Zanella, Maxime and Ben Ayed, Ismail},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year      = {2024}
}""",
}


@dataclass(frozen=True)
class MethodCard:
    """Card facts of one method.

    Attributes:
        title: display name, e.g. `"ProGrad (on CoOp context)"`.
        family: template file stem under `hub/templates/` (`coop_family`, `deep_prompt`, `dpl`, `generic`).
        summary: what training adds on top of the family's mechanism (one or two sentences, Markdown).
        papers: keys of `BIBTEX` to cite, most specific first.
    """

    title: str
    family: str
    summary: str = ""
    papers: tuple[str, ...] = field(default_factory=tuple)


METHOD_CARDS: dict[str, MethodCard] = {
    "coop": MethodCard(
        "CoOp",
        "coop_family",
        "Training minimises the cross-entropy of CLIP's logits over the training classes (Zhou et al., IJCV 2022).",
        ("coop",),
    ),
    "prograd_coop": MethodCard(
        "ProGrad prompts (CoOp context)",
        "coop_family",
        "Training uses prompt-aligned gradients (Zhu et al., ICCV 2023): per parameter tensor, when the "
        "cross-entropy gradient conflicts with the gradient of the KL divergence to zero-shot CLIP's prediction "
        "(hand-crafted prompt), its conflicting component is projected out, so the context keeps CLIP's general "
        "knowledge.",
        ("prograd", "coop"),
    ),
    "kgcoop": MethodCard(
        "KgCoOp",
        "coop_family",
        "Training adds a knowledge-guided penalty (Yao et al., CVPR 2023) that keeps each learned class text "
        "feature close to the frozen feature of the hand-crafted prompt: `CE + w * (1 - mean cos(t_i, t_i^clip))`.",
        ("kgcoop", "coop"),
    ),
    "cocoop": MethodCard(
        "CoCoOp",
        "coop_family",
        "A small meta-network maps each image feature to a shift added to every context vector (Zhou et al., "
        "CVPR 2022), so every image gets its own prompts; it is saved with the context.",
        ("cocoop", "coop"),
    ),
    "deep_prompt": MethodCard(
        "Deep prompts (VPT-deep / IVLP / MaPLe)",
        "deep_prompt",
        "Prompts are learned in several encoder layers of the text and/or vision towers (VPT-deep, independent "
        "vision-language prompting); with MaPLe coupling the vision prompts are learned projections of the text "
        "prompts.",
        ("maple", "vpt"),
    ),
    "maple": MethodCard(
        "MaPLe",
        "deep_prompt",
        "Vision prompts are learned linear projections of the text prompts at every prompted layer (Khattak et "
        "al., CVPR 2023), coupling the two towers.",
        ("maple",),
    ),
    "promptsrc": MethodCard(
        "PromptSRC",
        "deep_prompt",
        "Training regularises the deep prompts towards frozen CLIP (Khattak et al., ICCV 2023): L1 consistency of "
        "text and image features with zero-shot CLIP, a KL term on the logits, and Gaussian-weighted aggregation "
        "of the prompts over epochs.",
        ("promptsrc", "maple"),
    ),
    "restore": MethodCard(
        "RESTORE",
        "deep_prompt",
        "MaPLe-style coupled prompts trained with a feature-shift consistency loss between the text and vision "
        "prompts, plus residual 'surgery' adapters on the projected features whose mixing ratios are updated "
        "once during training (Yang et al., arXiv 2403.06136).",
        ("restore", "maple"),
    ),
    "lora": MethodCard(
        "CLIP-LoRA (low-rank adapters, template prompts)",
        "generic",
        "Low-rank adapters (LoRA) on the query, key and value projections of every attention layer of both towers, "
        "trained with the cross-entropy of the hand-crafted template's logits (CLIP-LoRA, Zanella & Ben Ayed, "
        '"Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR Workshops 2024). The text tower encodes '
        "the template prompts, so any class names work; a plain peft LoRA adapter (`merge_and_unload()` works).",
        ("clip_lora",),
    ),
    "deep_prompt:prefix": MethodCard(
        "Prefix deep prompts (DPL form)",
        "dpl",
        "This is the form of DPL's final stage (Huang et al., IJCAI 2025): per-layer lengths chosen by DPL's "
        "differentiable search (`peft_vlprompt.dpl.found_config`) or set by hand, then trained.",
        ("dpl",),
    ),
    "dpl": MethodCard(
        "DPL search-stage prompts",
        "dpl",
        "This adapter is DPL's search stage (Huang et al., IJCAI 2025): every layer mixes several candidate prompt "
        "lengths with learned architecture weights. Its per-layer argmax is exported as prefix deep prompts "
        "(`peft_vlprompt.dpl.found_config`) and trained again; share that adapter for inference.",
        ("dpl",),
    ),
}


def card_key(method: str, config) -> str:
    """`METHOD_CARDS` key of a config: its method, refined where one method covers several published ones."""
    if method == "deep_prompt" and getattr(config, "mode", None) == "prefix":
        return "deep_prompt:prefix"
    if method == "deep_prompt" and getattr(config, "coupling", None) == "maple":
        return "maple"
    return method


def method_card(method: str) -> MethodCard:
    """Card facts of `method` (a lower-cased `peft_type`); unknown methods get a generic card."""
    known = METHOD_CARDS.get(method)
    if known is not None:
        return known
    return MethodCard(title=method, family="generic", summary="", papers=())
