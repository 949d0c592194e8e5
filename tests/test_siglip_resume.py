"""Resuming a SigLIP run: the fresh config (token ids tagged with the default family, CLIP) is resolved for the
backbone before it is compared with the checkpoint's record (written after injection: tagged "siglip")."""

import json

import pytest
from peft import get_peft_model

from peft_vlprompt import CoOpConfig
from peft_vlprompt.backbones import backbone_for
from peft_vlprompt.training.checkpoint import STATE_FILE
from peft_vlprompt.training.run_record import check_resume_adapter, resolved_adapter_config
from tests.test_siglip_slots import tiny_siglip


def _checkpoint(tmp_path, config: CoOpConfig):
    model = get_peft_model(tiny_siglip(), config)  # as the loop records it: the config after injection
    recorded = json.loads(json.dumps(model.peft_config["default"].to_dict(), default=str))
    (tmp_path / STATE_FILE).write_text(json.dumps({"adapter_config": recorded}))
    return recorded


def test_a_siglip_run_resumes_with_its_own_settings(tmp_path):
    recorded = _checkpoint(tmp_path, CoOpConfig(n_ctx=4))
    assert (recorded["token_ids_from"], recorded["placeholder_token_id"]) == ("siglip", None)
    fresh = CoOpConfig(n_ctx=4)
    assert (fresh.token_ids_from, fresh.placeholder_token_id) == ("clip", 343)  # why a raw comparison refused it
    with pytest.raises(ValueError, match="token_ids_from"):
        check_resume_adapter(tmp_path, CoOpConfig(n_ctx=4).to_dict())
    check_resume_adapter(tmp_path, resolved_adapter_config(fresh, backbone_for(tiny_siglip())))


def test_a_siglip_run_still_refuses_other_settings(tmp_path):
    _checkpoint(tmp_path, CoOpConfig(n_ctx=4))
    with pytest.raises(ValueError, match="n_ctx"):
        check_resume_adapter(tmp_path, resolved_adapter_config(CoOpConfig(n_ctx=2), backbone_for(tiny_siglip())))
