"""The training DataLoader of the loop: rendered augmented views, or cached frozen image features of several views."""

import logging

import torch
from torch.utils.data import DataLoader

from ..data import make_transform
from .data import AugmentedViews, CachedViews, EpochSampler, KeyedViews, collate_train

logger = logging.getLogger(__name__)


def make_train_loader(args, task, image_processor, classifier, accelerator, cache: bool):
    """The training DataLoader: rendered views, or cached frozen features of `num_views` views per image."""
    transform = make_transform(image_processor, train=True, scale=tuple(args.train_crop_scale))
    views = AugmentedViews(task.train, transform, args.seed)
    dataset, num_views = views, None
    if cache:
        num_views = args.num_views
        dataset = CachedViews(encode_views(views, num_views, classifier, accelerator, args), task.train["label"])
    sampler = EpochSampler(len(dataset), args.seed, num_views=num_views)
    # its own generator: starting an iterator (a resume inside an epoch starts one more) then draws no global random
    # number, so model randomness (CLIP-LoRA's dropout) continues exactly from a checkpoint's RNG state
    loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size, collate_fn=collate_train,
                        drop_last=len(dataset) >= args.batch_size * accelerator.num_processes,
                        num_workers=args.dataloader_num_workers,
                        generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    return loader, sampler


@torch.no_grad()
def encode_views(views, num_views, classifier, accelerator, args) -> torch.Tensor:
    """Frozen image features `[num_views, N, D]` of every view, encoded once, sharded over processes."""
    keyed = KeyedViews(views, num_views)
    loader = accelerator.prepare_data_loader(
        DataLoader(
            keyed, batch_size=args.eval_batch_size, collate_fn=collate_train, num_workers=args.dataloader_num_workers
        )
    )
    out = None
    classifier.eval()
    for batch in loader:
        with accelerator.autocast():
            feats = classifier.image_features(batch["pixel_values"]).float()
        feats, pos = accelerator.gather_for_metrics((feats.contiguous(), batch["position"]))
        if out is None:
            out = torch.zeros(len(keyed), feats.shape[-1])
        out[pos.cpu()] = feats.cpu()
    logger.info("cached %d views x %d images of frozen image features", num_views, len(views))
    return out.view(num_views, len(views), -1)
