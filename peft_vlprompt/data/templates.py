"""Hand-crafted prompt templates, kept as plain data.

`TEMPLATES[variant][dataset]` gives the single template a method uses for a dataset:

- `"coop"`: CoOp's `CUSTOM_TEMPLATES` (zero-shot CLIP and the usual CoOp-family teacher).
- `"prograd"`: ProGrad's reordering ("a type of X, a photo of a {}."), used for its zero-shot teacher and its
  `CTX_INIT` phrase.
- `"kgcoop"`: KgCoOp's teacher templates (only DTD differs from CoOp).

`IMAGENET_TEMPLATES` is the 80-template ensemble from OpenAI's CLIP prompt-engineering notebook (the copy CoOp ships),
`IMAGENET_TEMPLATES_60` the 60-template list PromptSRC/DPL teachers use (it starts with "a photo of a {}." and
continues with the first 59 other entries of the 80-list, in order), and `IMAGENET_TEMPLATES_SELECT` the 7 templates
CoOp's zero-shot ensemble uses.
"""

_COOP = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

TEMPLATES: dict[str, dict[str, str]] = {
    "coop": dict(_COOP),
    "prograd": {
        **_COOP,
        "oxford_pets": "a type of pet, a photo of a {}.",
        "oxford_flowers": "a type of flower, a photo of a {}.",
        "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
        "dtd": "a texture of {}.",
        "food101": "a type of food, a photo of {}.",
    },
    "kgcoop": {**_COOP, "dtd": "a photo of a {}, a type of texture."},
}

IMAGENET_TEMPLATES: list[str] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

# PromptSRC's list: "a photo of a {}." moved to the front, then the 80-list up to "itap of the {}." without it.
IMAGENET_TEMPLATES_60: list[str] = ["a photo of a {}."] + [
    t for t in IMAGENET_TEMPLATES[: IMAGENET_TEMPLATES.index("itap of the {}.") + 1] if t != "a photo of a {}."
]

IMAGENET_TEMPLATES_SELECT: list[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def resolve_template(dataset: str, template: str | None, default: str) -> str:
    """Returns the template to use: `default` when `template` is None, a `TEMPLATES` table entry when `template`
    names a table ("coop", "prograd", "kgcoop"), or `template` itself when it is a format string with one `{}`."""
    if template is None:
        return default
    if template in TEMPLATES:
        table = TEMPLATES[template]
        if dataset not in table:
            raise ValueError(
                f"Template table `{template}` has no entry for dataset '{dataset}'; it covers {sorted(table)}."
            )
        return table[dataset]
    if template.count("{}") != 1:
        raise ValueError(
            f"`template` must be a template table name ({sorted(TEMPLATES)}) or a format string with exactly one "
            f"'{{}}', got {template!r}."
        )
    return template
