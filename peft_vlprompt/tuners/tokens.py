"""Token ids of prompt text, resolved per backbone family.

Configs are built before any model is seen, so `ctx_init` is first tokenized with the default family's shipped
tokenizer (CLIP's BPE) and tagged with that family in `token_ids_from`; when the adapter is injected into a model of
another family, `TokenIdsMixin.resolve_tokens` tokenizes it again with that family's tokenizer (or, for a family that
ships none, asks for `config.tokenize_with(tokenizer)`). Saved configs keep their ids, so they load bit-identically.
"""

import logging
from dataclasses import field

from ..backbones import FAMILIES, Backbone, default_family

logger = logging.getLogger(__name__)

PLACEHOLDER_TOKEN = "X"  # text of one learned context slot in prompt strings ("X X X X {class}.", as CoOp)
GIVEN = "tokenizer"  # `token_ids_from` of ids set by `tokenize_with`: never recomputed


class _TokenSources:
    """The values `token_ids_from` accepts: every registered family (read live, so a family registered after import
    round-trips too) and `GIVEN`."""

    def __contains__(self, value) -> bool:
        return value == GIVEN or value in FAMILIES

    def __iter__(self):
        return iter((*FAMILIES, GIVEN))


TOKEN_SOURCES = _TokenSources()


def ctx_init_token_ids_field():
    """The `ctx_init_token_ids` field of the configs using `TokenIdsMixin`."""
    return field(
        default=None,
        metadata={
            "help": "Token ids of `ctx_init` (derived with the tokenizer `token_ids_from` names; stored so "
            "loading needs no tokenizer)."
        },
    )


def token_ids_from_field():
    """The `token_ids_from` field of the configs using `TokenIdsMixin`."""
    return field(
        default=None,
        metadata={
            "choices": TOKEN_SOURCES,
            "help": "Backbone family whose tokenizer gave the token ids (recomputed on a model of another "
            "family), or 'tokenizer' when set by `tokenize_with` (derived; leave unset).",
        },
    )


def default_tokenizer():
    """The default family's shipped tokenizer (OpenAI's CLIP BPE; no Hub access needed)."""
    return default_family().default_tokenizer()


def default_token_ids(text: str) -> list[int]:
    """Ids of `text` without special tokens in the default family's tokenizer."""
    return default_family().token_ids(text)


clip_tokenizer = default_tokenizer  # names used before families existed (scripts, tests)
clip_token_ids = default_token_ids


def class_text(classname: str) -> str:
    """The one rule turning a class name into prompt text, used by every method and zero-shot: underscores become
    spaces, as the released CoOp-family code does (`golden_retriever` -> "golden retriever")."""
    return classname.replace("_", " ")


def leading_special_tokens(tokenizer) -> int:
    """How many special tokens `tokenizer` puts before the text (CLIP's BPE: 1, its start token; SigLIP's
    sentencepiece: 0): the position of the first context slot in its prompts."""
    plain = list(tokenizer(PLACEHOLDER_TOKEN, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(PLACEHOLDER_TOKEN)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if plain and full[start : start + len(plain)] == plain:
            return start
    raise ValueError(
        f"the tokenizer's ids of {PLACEHOLDER_TOKEN!r} with special tokens ({full}) do not contain its ids without "
        f"them ({plain}), so where prompt text starts is unknown; use a tokenizer that only adds tokens around text"
    )


def _single_id(ids: list[int]) -> int | None:
    return ids[0] if len(ids) == 1 else None  # a placeholder split into pieces has no one id


class TokenIdsMixin:
    """Resolution of a config's `ctx_init_token_ids` / `placeholder_token_id` / `token_ids_from` fields.

    The config declares the three fields and implements `_check_token_ids()` (its rules on the ids, re-run whenever
    they change)."""

    ctx_init: str | None
    ctx_init_token_ids: list[int] | None
    placeholder_token_id: int | None
    token_ids_from: str | None

    def _tokenize_ctx_init(self) -> None:
        """At build (or load): tokenize `ctx_init` with the default family unless ids were stored with it."""
        if self.ctx_init is None:
            return
        if self.ctx_init_token_ids is None:
            self.ctx_init_token_ids = default_token_ids(self.ctx_init)
            self.token_ids_from = default_family().family
        elif self.token_ids_from is None:  # saved before `token_ids_from` existed: CLIP BPE ids
            self.token_ids_from = default_family().family

    def _tokenize_placeholder(self) -> None:
        """At build (or load): the placeholder id in the tokenizer the ids come from (the default family's unless
        recorded otherwise), so a CLIP config reads the same before and after injection (resume compares them)."""
        if self.token_ids_from is None:  # new, or saved before `token_ids_from` existed (CLIP BPE)
            self.token_ids_from = default_family().family
        family = FAMILIES.get(self.token_ids_from)
        if self.placeholder_token_id is None and family is not None and family.default_tokenizer() is not None:
            self.placeholder_token_id = _single_id(family.token_ids(PLACEHOLDER_TOKEN))

    def tokenize_with(self, tokenizer) -> "TokenIdsMixin":
        """Take `ctx_init`'s ids and the placeholder id from `tokenizer` (the model's), for a family that ships no
        tokenizer or a checkpoint whose vocabulary differs from its family's; they are never recomputed."""
        if self.ctx_init is not None:
            self.ctx_init_token_ids = list(tokenizer(self.ctx_init, add_special_tokens=False)["input_ids"])
            self._check_token_ids(rederive=True)
        ids = list(tokenizer(PLACEHOLDER_TOKEN, add_special_tokens=False)["input_ids"])
        self.placeholder_token_id = _single_id(ids)
        self.token_ids_from = GIVEN
        self.given_tokenizer = tokenizer  # not a field (never saved): layers tokenizing more text at injection use it
        return self

    def resolve_tokens(self, backbone: Backbone) -> None:
        """At injection: ids computed with another family's tokenizer are recomputed with `backbone`'s family's."""
        source = self.token_ids_from
        if source not in (None, GIVEN, backbone.family):
            if self.ctx_init is not None:
                logger.info("tokenizing `ctx_init`=%r with the %s tokenizer (it was tokenized for %s)",
                            self.ctx_init, backbone.family, source)  # fmt: skip
                self.ctx_init_token_ids = backbone.token_ids(self.ctx_init)
                self._check_token_ids(rederive=True)
            self.placeholder_token_id = None
        if source != GIVEN:
            if self.placeholder_token_id is None and backbone.default_tokenizer() is not None:
                self.placeholder_token_id = _single_id(backbone.token_ids(PLACEHOLDER_TOKEN))
            self.token_ids_from = backbone.family

    def _check_token_ids(self, rederive: bool = False) -> None:
        """Check (and with `rederive`, re-derive what depends on) `ctx_init_token_ids` after they changed."""
        raise NotImplementedError
