"""Dataset registry: one `DatasetSpec` per dataset, held as data.

Directory names, split files, class-name fixes and templates follow CoOp's dataset modules and `DATASETS.md`
(see `docs/reference/methods.md` §11). A new dataset is one `register_dataset(DatasetSpec(...))` call; a dataset
generated in code registers with `kind="generated"` and a `builder(data_dir) -> RawSplits`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset

from .templates import TEMPLATES

# How the reader finds the images and labels (see `coop_layout.READERS`).
KINDS = (
    "split_file",  # CoOp `split_zhou_<Name>.json`; rebuilt with `split_builder` when missing
    "fgvc_aircraft",  # images_variant_{train,val,test}.txt + variants.txt
    "imagenet",  # images/{train,val}/<wnid>/ + classnames.txt; val is the test set
    "imagenet_indexed",  # test only: <image_dir>/<label index>/ + classnames.txt (ImageNetV2)
    "imagenet_folders",  # test only: <image_dir>/<wnid>/ for the wnids present + classnames.txt (Sketch, A, R)
    "imagefolder",  # any `datasets` imagefolder tree at `data_dir` (train/ [val/] test/ -> class folders)
    "generated",  # `builder(data_dir)` returns the splits
)
SPLIT_BUILDERS = ("class_folders", "oxford_pets", "sun397", "ucf101", "oxford_flowers", "stanford_cars")


@dataclass
class RawSplits:
    """What a `builder` returns: `datasets.Dataset` splits with an image column and an integer label column
    (`label` in 0..len(classnames)-1), plus the class names in label order. A `classname` column is optional."""

    train: Dataset | None
    val: Dataset | None
    test: Dataset
    classnames: list[str]
    image_column: str = "image"
    label_column: str = "label"


@dataclass
class DatasetSpec:
    """How to find and read one dataset.

    Args:
        name (`str`): registry key, lower case (`"dtd"`).
        kind (`str`, defaults to `"split_file"`): reader to use, one of `KINDS`.
        directory (`str`, *optional*): folder under the data root (`"dtd"`); None means the data root itself.
        image_dir (`str`, defaults to `""`): image folder relative to `directory` (`"images"`).
        split_file (`str`, *optional*): CoOp split file name in `directory` (`"split_zhou_DescribableTextures.json"`).
        split_paths_relative_to (`str`, defaults to `"image_dir"`): `"image_dir"`, or `"dataset_dir"` (StanfordCars).
        split_builder (`str`, *optional*): how to rebuild a missing split file, one of `SPLIT_BUILDERS`.
        classname_fixes (`dict[str, str]`): folder name -> class name used in prompts (EuroSAT, Caltech101).
        ignored_classes (`tuple[str, ...]`): class folders to drop (Caltech101's BACKGROUND_Google, Faces_easy).
        template (`str`, defaults to `"a photo of a {}."`): standard CoOp template.
        num_classes (`int`, *optional*): class count of the full dataset (informational).
        dassl_name (`str`, *optional*): the dataset's class name in CoOp/Dassl (`"DescribableTextures"`).
        builder (`Callable[[str | None], RawSplits]`, *optional*): for `kind="generated"`.
    """

    name: str = field(metadata={"help": "Registry key, lower case."})
    kind: str = field(default="split_file", metadata={"help": f"Reader kind, one of {KINDS}."})
    directory: str | None = field(default=None, metadata={"help": "Dataset folder under the data root."})
    image_dir: str = field(default="", metadata={"help": "Image folder relative to `directory`."})
    split_file: str | None = field(default=None, metadata={"help": "CoOp split json name inside `directory`."})
    split_paths_relative_to: str = field(
        default="image_dir", metadata={"help": "Split-file paths are relative to 'image_dir' or 'dataset_dir'."}
    )
    split_builder: str | None = field(
        default=None, metadata={"help": f"Rule to rebuild a missing split file, one of {SPLIT_BUILDERS}."}
    )
    classname_fixes: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Folder name -> class name used in prompts."}
    )
    ignored_classes: tuple[str, ...] = field(default=(), metadata={"help": "Class folders to drop."})
    template: str = field(default="a photo of a {}.", metadata={"help": "Standard CoOp prompt template."})
    num_classes: int | None = field(default=None, metadata={"help": "Class count of the full dataset."})
    dassl_name: str | None = field(default=None, metadata={"help": "CoOp/Dassl dataset name, for lookups."})
    builder: Callable[[str | None], RawSplits] | None = field(
        default=None, metadata={"help": "For kind='generated': builder(data_dir) -> RawSplits."}
    )

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or self.name != self.name.lower():
            raise ValueError(f"`name` must be a non-empty lower-case string, got {self.name!r}.")
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")
        if self.split_paths_relative_to not in ("image_dir", "dataset_dir"):
            raise ValueError(
                f"`split_paths_relative_to` must be 'image_dir' or 'dataset_dir', got {self.split_paths_relative_to!r}."
            )
        if self.split_builder is not None and self.split_builder not in SPLIT_BUILDERS:
            raise ValueError(f"`split_builder` must be one of {SPLIT_BUILDERS} or None, got {self.split_builder!r}.")
        if self.template.count("{}") != 1:
            raise ValueError(f"`template` must contain exactly one '{{}}', got {self.template!r}.")
        if self.kind == "generated":
            if not callable(self.builder):
                raise TypeError(f"`builder` must be callable for kind='generated', got {self.builder!r}.")
        elif self.builder is not None:
            raise ValueError(f"`builder` is only used with kind='generated', got kind={self.kind!r}.")
        if self.kind == "split_file" and not self.split_file:
            raise ValueError(f"`split_file` is required for kind='split_file' (dataset '{self.name}').")
        if self.kind in ("split_file", "fgvc_aircraft", "imagenet", "imagenet_indexed", "imagenet_folders"):
            if not self.directory:
                raise ValueError(f"`directory` is required for kind={self.kind!r} (dataset '{self.name}').")

    @property
    def test_only(self) -> bool:
        """Datasets that only provide a test split (the ImageNet variants, for domain generalisation)."""
        return self.kind in ("imagenet_indexed", "imagenet_folders")


DATASET_SPECS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Adds `spec` to `DATASET_SPECS`. Raises if the name is taken (unregister first to replace)."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"`spec` must be a DatasetSpec, got {type(spec).__name__}.")
    if spec.name in DATASET_SPECS:
        raise ValueError(
            f"Dataset '{spec.name}' is already registered; use another name or call "
            f"`unregister_dataset('{spec.name}')` first."
        )
    DATASET_SPECS[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> DatasetSpec:
    """Removes and returns the spec registered under `name`."""
    if name not in DATASET_SPECS:
        raise KeyError(f"Dataset '{name}' is not registered.")
    return DATASET_SPECS.pop(name)


def get_dataset_spec(name: str) -> DatasetSpec:
    """Looks up a spec by registry name (case-insensitive) or by its CoOp/Dassl name (`"DescribableTextures"`)."""
    if not isinstance(name, str):
        raise TypeError(f"`dataset` must be a string, got {type(name).__name__}.")
    key = name.lower()
    if key in DATASET_SPECS:
        return DATASET_SPECS[key]
    for spec in DATASET_SPECS.values():
        if spec.dassl_name is not None and spec.dassl_name.lower() == key:
            return spec
    raise ValueError(f"Unknown dataset '{name}'. Known datasets: {', '.join(sorted(DATASET_SPECS))}.")


EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH101_CLASSNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
CALTECH101_IGNORED = ("BACKGROUND_Google", "Faces_easy")

_T = TEMPLATES["coop"]
_BUILTIN = [
    DatasetSpec(
        name="imagenet", kind="imagenet", directory="imagenet", image_dir="images", template=_T["imagenet"],
        num_classes=1000, dassl_name="ImageNet",
    ),
    DatasetSpec(
        name="caltech101", directory="caltech-101", image_dir="101_ObjectCategories",
        split_file="split_zhou_Caltech101.json", split_builder="class_folders", classname_fixes=CALTECH101_CLASSNAMES,
        ignored_classes=CALTECH101_IGNORED, template=_T["caltech101"], num_classes=100, dassl_name="Caltech101",
    ),
    DatasetSpec(
        name="oxford_pets", directory="oxford_pets", image_dir="images", split_file="split_zhou_OxfordPets.json",
        split_builder="oxford_pets", template=_T["oxford_pets"], num_classes=37, dassl_name="OxfordPets",
    ),
    DatasetSpec(
        name="stanford_cars", directory="stanford_cars", image_dir="", split_file="split_zhou_StanfordCars.json",
        split_paths_relative_to="dataset_dir", split_builder="stanford_cars", template=_T["stanford_cars"],
        num_classes=196, dassl_name="StanfordCars",
    ),
    DatasetSpec(
        name="oxford_flowers", directory="oxford_flowers", image_dir="jpg", split_file="split_zhou_OxfordFlowers.json",
        split_builder="oxford_flowers", template=_T["oxford_flowers"], num_classes=102, dassl_name="OxfordFlowers",
    ),
    DatasetSpec(
        name="food101", directory="food-101", image_dir="images", split_file="split_zhou_Food101.json",
        split_builder="class_folders", template=_T["food101"], num_classes=101, dassl_name="Food101",
    ),
    DatasetSpec(
        name="fgvc_aircraft", kind="fgvc_aircraft", directory="fgvc_aircraft", image_dir="images",
        template=_T["fgvc_aircraft"], num_classes=100, dassl_name="FGVCAircraft",
    ),
    DatasetSpec(
        name="sun397", directory="sun397", image_dir="SUN397", split_file="split_zhou_SUN397.json",
        split_builder="sun397", template=_T["sun397"], num_classes=397, dassl_name="SUN397",
    ),
    DatasetSpec(
        name="dtd", directory="dtd", image_dir="images", split_file="split_zhou_DescribableTextures.json",
        split_builder="class_folders", template=_T["dtd"], num_classes=47, dassl_name="DescribableTextures",
    ),
    DatasetSpec(
        name="eurosat", directory="eurosat", image_dir="2750", split_file="split_zhou_EuroSAT.json",
        split_builder="class_folders", classname_fixes=EUROSAT_CLASSNAMES, template=_T["eurosat"], num_classes=10,
        dassl_name="EuroSAT",
    ),
    DatasetSpec(
        name="ucf101", directory="ucf101", image_dir="UCF-101-midframes", split_file="split_zhou_UCF101.json",
        split_builder="ucf101", template=_T["ucf101"], num_classes=101, dassl_name="UCF101",
    ),
    DatasetSpec(
        name="imagenet_v2", kind="imagenet_indexed", directory="imagenetv2",
        image_dir="imagenetv2-matched-frequency-format-val", template=_T["imagenet_v2"], num_classes=1000,
        dassl_name="ImageNetV2",
    ),
    DatasetSpec(
        name="imagenet_sketch", kind="imagenet_folders", directory="imagenet-sketch", image_dir="images",
        template=_T["imagenet_sketch"], num_classes=1000, dassl_name="ImageNetSketch",
    ),
    DatasetSpec(
        name="imagenet_a", kind="imagenet_folders", directory="imagenet-adversarial", image_dir="imagenet-a",
        template=_T["imagenet_a"], num_classes=200, dassl_name="ImageNetA",
    ),
    DatasetSpec(
        name="imagenet_r", kind="imagenet_folders", directory="imagenet-rendition", image_dir="imagenet-r",
        template=_T["imagenet_r"], num_classes=200, dassl_name="ImageNetR",
    ),
    # Any `datasets` imagefolder tree given as `data_dir` (class names = sorted folder names).
    DatasetSpec(name="imagefolder", kind="imagefolder"),
]  # fmt: skip
for _spec in _BUILTIN:
    register_dataset(_spec)
