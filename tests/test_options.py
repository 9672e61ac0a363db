"""One default per setting, whichever door: the options objects describe their fields, the CLI
builds its flags and the docks their fields from them, and each gives back the object's own
defaults when the user changes nothing."""

import argparse

import pytest
from helpers import PLUGIN

from napari_4dstem_rvae.cli import build_parser
from napari_4dstem_rvae.cli.arguments import add_options, options_from_args
from napari_4dstem_rvae.dataset import Calibration
from napari_4dstem_rvae.options import option_specs
from napari_4dstem_rvae.processing.chain import PreprocessOptions
from napari_4dstem_rvae.processing.com import COMOptions
from napari_4dstem_rvae.rvae.config import RVAEConfig
from napari_4dstem_rvae.workflows.atoms import AtomOptions
from napari_4dstem_rvae.workflows.stem import RunOptions

OPTIONS = [Calibration, COMOptions, PreprocessOptions, RVAEConfig, AtomOptions, RunOptions]


@pytest.mark.parametrize("cls", OPTIONS)
def test_every_user_option_has_help_and_the_cli_default_is_the_api_default(cls):
    specs = option_specs(cls)
    assert specs and all(spec.describe.help for spec in specs.values())
    parser = argparse.ArgumentParser()
    added = add_options(parser, cls)
    assert set(added) == set(option_specs(cls, "cli"))
    assert options_from_args(cls, parser.parse_args([])) == cls()     # nothing typed: the API's defaults
    for action in parser._actions[1:]:
        assert action.help and "(default: " in action.help, action.dest


def test_the_commands_offer_the_options_with_their_defaults():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    run = commands["run"].parse_args(["scan.h5"])
    assert options_from_args(RVAEConfig, run) == RVAEConfig()
    assert options_from_args(RunOptions, run) == RunOptions()
    assert options_from_args(COMOptions, run) == COMOptions()
    assert options_from_args(COMOptions, commands["com"].parse_args(["scan.h5"])) == COMOptions()
    assert options_from_args(AtomOptions, commands["atoms"].parse_args(["movie.tif"])) == AtomOptions()
    # a typed value reaches the object, in the option's own unit and vocabulary
    typed = commands["com"].parse_args(["scan.h5", "--mask", "disk", "--radius", "3", "--reference", "none",
                                        "--flip", "yes", "--rotation", "12.5"])
    assert options_from_args(COMOptions, typed) == COMOptions(mask="disk", radius=3.0, reference=None, flip=True,
                                                              rotation=12.5)
    assert COMOptions().unit == "bf"          # --radius 3 is 3 bright-field radii in every door
    for name, sub in commands.items():       # every flag of every command says what it does
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings}"


def test_the_docks_fields_have_the_api_defaults(make_napari_viewer):
    from napari_4dstem_rvae._napari.fields import OptionForm

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "graphene")
    dock = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")[1]
    assert dock.train.config() == RVAEConfig()
    assert dock.train.run_form.options() == RunOptions()
    assert dock.com.options() == COMOptions()
    assert dock.atoms.form.options() == AtomOptions()
    assert dock.preprocess.options() == PreprocessOptions()
    assert dock.open.calibration.given() == {}
    for cls in OPTIONS:
        form = OptionForm(cls)
        assert {w.name for w in form.fields} == set(option_specs(cls, "gui"))
        assert form.options() == cls()
    # a field's label and tooltip come from the option's description
    assert dock.train.epochs.tooltip.startswith(option_specs(RVAEConfig)["epochs"].describe.help)
    assert "about 2,400 optimisation steps" in dock.train.epochs.tooltip     # what "auto" (0) means
    assert dock.train.epochs.value == 0 and dock.train.epochs.label == "epochs (0: auto)"
