"""Guards on the peft internals `_peft_compat` relies on: if peft moves, these fail loudly."""

import enum

import peft
import pytest
from peft import PeftConfig, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import peft_vlprompt
from peft_vlprompt import _peft_compat
from peft_vlprompt.tuners.coop import CoOpConfig, CoOpModel


def test_peft_version_is_in_the_tested_range():
    low, high = _peft_compat.TESTED_PEFT_RANGE
    assert low <= _peft_compat.peft_version_tuple() < high, (
        f"peft {peft.__version__} is outside the range peft_vlprompt's registration was tested with "
        f"({low} <= v < {high}); re-check _peft_compat.py and update the pin"
    )


def test_enum_internals_we_extend_still_exist():
    assert issubclass(PeftType, str) and issubclass(PeftType, enum.Enum)
    for attr in ("_member_names_", "_member_map_", "_value2member_map_"):
        assert hasattr(PeftType, attr), f"peft.PeftType lost `{attr}`; _peft_compat.ensure_peft_type must change"


def test_importing_the_package_registers_coop_as_a_real_peft_type():
    assert PeftType("COOP") is PeftType.COOP
    assert PeftType.COOP in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.COOP] is CoOpConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.COOP] is CoOpModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.COOP] == CoOpModel.prefix
    assert CoOpConfig().peft_type is PeftType.COOP and CoOpConfig().task_type is None
    assert type(PeftConfig.from_peft_type(peft_type="COOP", n_ctx=3)) is CoOpConfig


def test_registration_is_idempotent_and_refuses_a_different_class():
    assert _peft_compat.ensure_peft_type("coop") is PeftType.COOP
    _peft_compat.register_method(name="coop", config_cls=CoOpConfig, model_cls=CoOpModel)  # no-op
    import importlib

    importlib.reload(peft_vlprompt)  # re-importing the package must not fail

    class OtherConfig(CoOpConfig):
        pass

    with pytest.raises(ValueError, match="peft method `coop` is already registered with config CoOpConfig"):
        _peft_compat.register_method(name="coop", config_cls=OtherConfig, model_cls=CoOpModel)


def test_new_members_behave_like_native_ones():
    member = _peft_compat.ensure_peft_type("vlprompt_probe")
    assert member is PeftType.VLPROMPT_PROBE and member.value == "VLPROMPT_PROBE" and member == "VLPROMPT_PROBE"
    assert _peft_compat.ensure_peft_type("vlprompt_probe") is member
    assert PeftType["LORA"] is PeftType.LORA  # native members untouched
