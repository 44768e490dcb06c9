"""FLOPs per token of training and inference.

Training costs `6 N + 12 L T d` FLOPs per token (Kaplan et al. 2020, sec. 2.1; the PaLM paper's
appendix B; nanoGPT's `estimate_mfu`): each of the `N` matmul parameters does one multiply-add
(2 FLOPs) in the forward pass and two in the backward pass (gradients of inputs and of weights),
and attention adds `2 * 2 T d` forward FLOPs per token and layer (scores `q k^T` and the weighted
sum over values across a context of `T`), tripled by the backward pass. Forward-only inference is
`2 N + 4 L T d`, where `T` is the attended context and `d` the query heads' width
`n_head * head_dim` (the model width unless `model.head_dim` sets it apart, as Qwen3 does). `N` counts the parameters that take part in a
matmul per token (`count_params(...)["compute"]`): lookup-only tables (learned positions, an
untied token table) cost no FLOPs; a tied embedding does, as the output head. Norms, biases,
softmax and the causal mask's saving are left out, as in the papers: they are under 1% for
models wider than a few hundred units.
"""

from kerasllm.plan.params import count_params, head_dims


def flops_per_token(model_config, seq_len=None, training=True, vocab_size=None):
    """Model FLOPs per token.

    Args:
        model_config: a `kerasllm.config.ModelConfig`.
        seq_len: context length `T` of the attention term; `None` means `model_config.block_size`.
        training: `6 N + 12 L T d` (forward and backward) when True, else `2 N + 4 L T d`.
        vocab_size: overrides `model_config.vocab_size`.

    Returns:
        FLOPs per token as an int. Multiply by tokens per second to get achieved FLOP/s, and
        divide by `kerasllm.plan.hardware.measure_peak_flops()` for MFU.

    Examples:

    >>> from kerasllm.models.presets import get_preset
    >>> f"{flops_per_token(get_preset('gpt2-124m')) / 1e9:.3f} GFLOP"
    '0.855 GFLOP'
    """
    c = model_config
    n = count_params(c, vocab_size)["compute"]
    t = c.block_size if seq_len is None else seq_len
    if c.arch == "gpt":  # scores and weighted sum span the query heads' width (n_embd unless head_dim is set)
        n_head, _, head_dim, _ = head_dims(c)
        attention = 4 * c.n_layer * t * n_head * head_dim
    else:
        attention = 0
    per_token = 2 * n + attention
    return 3 * per_token if training else per_token


def training_flops(model_config, tokens, seq_len=None, vocab_size=None):
    """Total model FLOPs of training on `tokens` tokens."""
    return flops_per_token(model_config, seq_len, True, vocab_size) * tokens
