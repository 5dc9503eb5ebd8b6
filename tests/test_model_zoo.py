"""The CIFAR-10 model zoo matches the original loss-landscape architectures, checkpoint for checkpoint."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cifar10.model_loader import MODELS, build
from tests.synthetic_weights import synthetic_state_dict

REFERENCE_DIR = Path(__file__).parent / "fixtures" / "reference"
LAYOUTS = json.loads((REFERENCE_DIR / "cifar10_state_dict_layouts.json").read_text())
# The read-only original of the weight recipe, present where the project sits beside ../shared.
SHARED_RECIPE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "synthetic_weights.py"


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


@pytest.mark.skipif(not SHARED_RECIPE.exists(), reason=f"reference recipe not present at {SHARED_RECIPE}")
def test_weight_recipe_matches_shared_reference():
    spec = importlib.util.spec_from_file_location("shared_synthetic_weights", SHARED_RECIPE)
    shared_recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared_recipe)
    # These small layouts exercise every rule of the recipe (int64, running_var, conv and
    # linear weights, BatchNorm scale, biases) without drawing hundreds of millions of numbers.
    for name in ("vgg9", "densenet121", "resnet56", "wrn56_2_noshort"):
        layout = LAYOUTS[name]["state_dict"]
        expected = shared_recipe.synthetic_state_dict(layout)
        actual = synthetic_state_dict(layout)
        assert list(actual) == list(expected)
        for key, tensor in expected.items():
            assert actual[key].dtype == tensor.dtype, key
            assert torch.equal(actual[key], tensor), key
