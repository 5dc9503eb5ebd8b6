"""A tiny GPT-2 language model built from a config: no weights, tokenizer or config is fetched.

``tiny_gpt()`` is the suite's ``--model examples.tiny_lm.model:tiny_gpt`` factory (no arguments,
random initial weights; the trained ones come from ``--model_file``). Dropout is 0 everywhere so
that evaluation (and training, given a seed) is deterministic.

The input and output embeddings are tied (GPT-2's default): ``state_dict()`` holds both
``transformer.wte.weight`` and ``lm_head.weight`` (one tensor under two names), while
``named_parameters()`` lists it once, as ``transformer.wte.weight``. A state_dict saved with
torch.save loads back with torch.load(weights_only=True) and a strict load_state_dict into a
fresh ``tiny_gpt()``.
"""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')         # never reach the Hugging Face Hub
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from examples.tiny_lm.data import VOCAB_SIZE, WINDOW  # noqa: E402

EMBEDDING = 64   # width of the residual stream
LAYERS = 2       # transformer blocks: transformer.h.0 and transformer.h.1
HEADS = 2


def tiny_config():
    """The GPT2Config of tiny_gpt()."""
    return GPT2Config(vocab_size=VOCAB_SIZE, n_positions=WINDOW, n_embd=EMBEDDING, n_layer=LAYERS,
                      n_head=HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      summary_first_dropout=0.0, bos_token_id=None, eos_token_id=None,
                      use_cache=False)


def tiny_gpt():
    """A freshly initialized two-block GPT-2 over the fixed character vocabulary of data.py
    (about 110 thousand parameters), in eval mode."""
    model = GPT2LMHeadModel(tiny_config())
    # Recent transformers pick the loss from the class name, find none for 'GPT2LMHeadModel' and
    # warn before falling back to the causal LM loss; name that loss outright (older releases
    # ignore the attribute).
    model.loss_type = 'ForCausalLM'
    return model.eval()
