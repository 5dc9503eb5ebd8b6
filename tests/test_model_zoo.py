"""The CIFAR-10 model zoo matches the original loss-landscape architectures, checkpoint for checkpoint."""
import json
from pathlib import Path

import pytest
import torch

from losslandscape.models.cifar10.zoo import MODELS, build
from tests.fixtures.weight_facts import FACTS_FILE, LAYOUT_NAMES, state_dict_facts
from tests.synthetic_weights import synthetic_state_dict

REFERENCE_DIR = Path(__file__).parent / "fixtures" / "reference"
LAYOUTS = json.loads((REFERENCE_DIR / "cifar10_state_dict_layouts.json").read_text())


@pytest.fixture(scope="module")
def golden():
    return torch.load(REFERENCE_DIR / "golden_logits.pt", weights_only=True)


def test_zoo_names_are_the_reference_names():
    assert sorted(MODELS) == sorted(LAYOUTS)


def test_build_rejects_unknown_name_listing_valid_ones():
    with pytest.raises(KeyError, match="resnet56"):
        build("resnet57")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_state_dict_layout(name):
    # Meta tensors carry shapes and dtypes without allocating or initializing any memory.
    with torch.device("meta"):
        model = build(name)
    layout = [[key, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
              for key, tensor in model.state_dict().items()]
    assert layout == LAYOUTS[name]["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == LAYOUTS[name]["num_parameters"]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_logits_match_reference(name, golden):
    model = build(name)
    model.load_state_dict(synthetic_state_dict(LAYOUTS[name]["state_dict"]), strict=True)
    model.eval()
    with torch.inference_mode():
        logits = model(golden["input"])
    expected = golden["logits"][name]
    assert logits.shape == expected.shape == (4, 10)
    # Relative to the largest logit: deep nets without shortcuts amplify these weights a lot.
    assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_weight_recipe_matches_shared_reference():
    # The shared original's output, recorded as per-tensor facts (tests/fixtures/weight_facts.py):
    # compared in every clone, with or without ../shared beside it.
    recorded = json.loads(FACTS_FILE.read_text())
    for name in LAYOUT_NAMES:
        facts = state_dict_facts(synthetic_state_dict(LAYOUTS[name]["state_dict"]))
        assert [row[0] for row in facts] == [row[0] for row in recorded[name]], name
        for row, expected in zip(facts, recorded[name]):
            assert row == expected, (name, row[0])
