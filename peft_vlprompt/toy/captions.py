"""Caption templates for pretraining the toy CLIP, and the ones deliberately held out of it.

The downstream template "a photo of a {}." IS part of pretraining (it is the generic caption, and the `photo`
domain's own), as it is for real CLIP, whose web captions often read that way. Prompt learning then starts from
a sensible hand-crafted prompt and has to beat it. `HELD_OUT_TEMPLATES` never appear in pretraining; use them to
test how a method or a template ensemble copes with unseen wording.
"""

# generic captions, for every domain
GENERIC_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "a small {}.",
    "a big {}.",
    "the {}.",
    "there is a {} in the picture.",
)
# captions that name the style, so the text tower learns the domain words (as "sketch" in real alt-text)
DOMAIN_TEMPLATES = {
    "photo": ("a photo of a {}.", "a blurry photo of a {}.", "a bright photo of a {}."),
    "sketch": ("a sketch of a {}.", "a drawing of a {}.", "a pencil sketch of a {}."),
    "cartoon": ("a cartoon {}.", "a cartoon of a {}.", "an illustration of a {}."),
    "painting": ("a painting of a {}.", "an oil painting of a {}."),
    "night": ("a dark photo of a {}.", "a photo of a {} at night."),
}
# colour-only captions (the `colors` task's template "a photo of a {} shape." is one of them)
COLOR_TEMPLATES = ("a {} shape.", "a photo of a {} shape.", "something {}.", "a {} object.")
# never seen in pretraining
HELD_OUT_TEMPLATES = (
    "itap of a {}.",
    "a rendering of a {}.",
    "a close-up photo of a {}.",
    "art of the {}.",
    "a good photo of the {}.",
)
