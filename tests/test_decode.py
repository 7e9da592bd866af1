"""The lean one-token decoder, eager and compiled: the same tokens as the general forward pass, its checks, its
reuse."""

import pytest
import torch

from iluvattnshun.decode import Decoder, weights_state
from iluvattnshun.nn import MultilayerTransformer


@pytest.mark.parametrize(("layers", "heads", "batch", "tie"), [(4, 4, 1, False), (2, 2, 3, True), (1, 8, 2, False)])
def test_greedy_tokens_are_identical_to_the_general_path(layers: int, heads: int, batch: int, tie: bool) -> None:
    torch.manual_seed(layers * 10 + heads)
    model = MultilayerTransformer(39, dim_model=64, num_heads=heads, num_layers=layers, tie_weights=tie)
    model.train()  # generate switches to eval and back
    prompt = torch.randint(0, 39, (batch, 7))
    general = model.generate(prompt, 200, temperature=0.0, fast=False)
    fast = model.generate(prompt, 200, temperature=0.0)
    assert torch.equal(fast, general) and model.training
    # the step's logits are the model's logits, not only their argmax
    decoder = Decoder(model, batch, 7 + 20)
    decoder.generate(prompt, 20, temperature=0.0)
    full = model.eval()(fast[:, :27]).logits[:, -1]  # logits after all 27 tokens, from scratch
    step = decoder.step(fast[:, 26], 26)
    assert torch.allclose(step, full, atol=1e-4)


def test_sampling_with_a_generator_is_reproducible_and_hooks_take_the_general_path() -> None:
    torch.manual_seed(0)
    model = MultilayerTransformer(39, dim_model=32, num_heads=2, num_layers=2).eval()
    prompt = torch.randint(0, 39, (2, 5))
    a = model.generate(prompt, 30, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 30, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    seen: list[str] = []
    with model.hooks({"layers.1.resid_post": lambda t, name: seen.append(name)}):
        model.generate(prompt, 3, temperature=0.0)
    assert len(seen) == 3  # the prefill and the two one-token steps all ran through the hooked forward


def test_decoder_refuses_what_it_cannot_serve_and_is_reusable() -> None:
    model = MultilayerTransformer(39, dim_model=32, num_heads=2, num_layers=2).eval()
    decoder = Decoder(model, 1, 20)
    with pytest.raises(ValueError, match="serves batch 1 and 20 positions"):
        decoder.generate(torch.zeros(1, 15, dtype=torch.long), 6, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        decoder.generate(torch.zeros(1, 5, dtype=torch.long), 5, temperature=float("nan"))
    prompts = [torch.randint(0, 39, (1, 5)) for _ in range(2)]
    for prompt in prompts:  # the cache is rewritten for every prompt: nothing leaks between calls
        assert torch.equal(
            decoder.generate(prompt, 10, temperature=0.0), model.generate(prompt, 10, temperature=0.0, fast=False)
        )


def test_compiled_decoder_matches_the_eager_step_and_refuses_what_it_cannot_serve() -> None:
    """One compiled decoder (compiling takes tens of seconds on two cores), checked in order: its logits, its
    tokens, its refusals, and last the refusal of weights changed since its build."""
    torch.manual_seed(5)
    model = MultilayerTransformer(39, dim_model=32, num_heads=2, num_layers=2).eval()
    with torch.inference_mode():  # a common place to build one: its cache must still be writable by export
        compiled = Decoder(model, 2, 40, compile=True)
    eager = Decoder(model, 2, 40)
    # teacher-forced through all 40 positions: the logits of every step, not only their argmax
    seq = torch.randint(0, 39, (2, 40), generator=torch.Generator().manual_seed(0))
    compiled.prefill(seq[:, :3])
    eager.prefill(seq[:, :3])
    for position in range(3, 40):
        token = seq[:, position]  # a strided view: the compiled step must not read it as contiguous
        assert torch.allclose(compiled.step(token, position), eager.step(token, position), atol=1e-5)
    assert torch.allclose(compiled.step(seq[:, 39], 39), model(seq).logits[:, -1], atol=1e-4)
    for seed in range(3):  # the cache is rewritten for every prompt; prompt lengths differ
        prompt = torch.randint(0, 39, (2, 4 + 3 * seed), generator=torch.Generator().manual_seed(seed))
        new = 40 - prompt.shape[1]
        assert torch.equal(
            compiled.generate(prompt, new, temperature=0.0), model.generate(prompt, new, temperature=0.0, fast=False)
        )

    with pytest.raises(ValueError, match="serves batch 2 and 40 positions"):
        compiled.generate(torch.zeros(1, 5, dtype=torch.long), 5, temperature=0.0)
    with pytest.raises(ValueError, match=r"steps 2 tokens on cpu, got shape \(1,\)"):
        compiled.step(torch.zeros(1, dtype=torch.long), 5)  # the compiled function itself checks nothing

    prompt = torch.randint(0, 39, (2, 6))
    before = compiled.generate(prompt, 20, temperature=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(prompt).logits.logsumexp(-1).mean().backward()
    optimizer.step()  # the compiled step still holds the old weights: it must not run on them silently
    with pytest.raises(RuntimeError, match="parameters changed after this decoder compiled them"):
        compiled.generate(prompt, 20, temperature=0.0)
    eager = Decoder(model, 2, 40)  # the eager step reads the parameters as they are now
    after = eager.generate(prompt, 20, temperature=0.0)
    assert torch.equal(after, model.generate(prompt, 20, temperature=0.0, fast=False))
    assert not torch.equal(after, before)


def test_weights_state_sees_a_step_a_load_a_replacement_and_a_move() -> None:
    model = MultilayerTransformer(39, dim_model=16, num_heads=2, num_layers=1)
    state = model.state_dict()
    changes = [
        lambda: torch.optim.SGD(model.parameters(), lr=0.1).step(),  # no gradients: nothing moves
        lambda: model.load_state_dict(state),  # copies in place: the version counters move
        lambda: model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True),  # new parameters
        lambda: model.double(),  # new storage and dtype
    ]
    seen = []
    for change in changes:
        before = weights_state(model)
        change()
        seen.append(weights_state(model) != before)
    assert seen == [False, True, True, True]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_decoder_on_cuda_decodes_the_general_paths_tokens() -> None:
    # Its CPU twin: test_compiled_decoder_matches_the_eager_step_and_refuses_what_it_cannot_serve.
    torch.manual_seed(0)
    model = MultilayerTransformer(39, dim_model=64, num_heads=4, num_layers=2).cuda().eval()
    prompt = torch.randint(0, 39, (1, 8), device="cuda")
    compiled = Decoder(model, 1, 72, compile=True)
    assert torch.equal(
        compiled.generate(prompt, 64, temperature=0.0), model.generate(prompt, 64, temperature=0.0, fast=False)
    )
