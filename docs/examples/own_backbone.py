"""AIB on a backbone of your own: a 3-conv Flax CNN, the library's AIBHead, aib_loss and its jitted step.

    python docs/examples/own_backbone.py        # from any folder, with ib_attention_jax installed

Needs only the core install (jax, flax, optax): the data are generated here. Each image is noise with
one coloured square at a random place; the class is its colour (4 classes), so the attention has
something to find. Prints the loss going down over a few jitted steps, then the held-out accuracy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ib_attention_jax import AIBHead, ObjectiveConfig, StepConfig, TrainState, aib_loss, make_train_step

COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)  # the 4 classes
SIZE, BATCH, STEPS = 32, 32, 40


def make_batch(rng: np.random.Generator, batch: int = BATCH) -> dict[str, np.ndarray]:
    """Images (b, 32, 32, 3): noise and one 8x8 square of the class colour at a random place."""
    labels = rng.integers(0, len(COLOURS), batch)
    images = rng.normal(0.0, 0.3, (batch, SIZE, SIZE, 3)).astype(np.float32)
    for i, (y, x) in enumerate(rng.integers(0, SIZE - 8, (batch, 2))):
        images[i, y:y + 8, x:x + 8] += 2.0 * COLOURS[labels[i]]
    return {"image": images, "label": labels.astype(np.int32)}


class SmallCNN(nn.Module):
    """Your backbone: plain Flax, three 3x3 convolutions with BatchNorm, one 2x2 pool -> (b, 16, 16, 32)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for width in (16, 32, 32):
            x = nn.Conv(width, (3, 3), use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            if width == 16:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return x


class AIBNet(nn.Module):
    """The backbone's feature map into the AIB head (attention, modulation, latent, decoder).

    Called as the library's models are: ``(x, train=, num_samples=, deterministic=, example_ids=)``.
    """

    num_classes: int = len(COLOURS)

    @nn.compact
    def __call__(self, x, *, train=False, num_samples=1, deterministic=False, example_ids=None):
        features = SmallCNN(name="backbone")(x, train)
        return AIBHead(latent_dim=32, num_classes=self.num_classes, name="head")(
            features, train=train, num_samples=num_samples, deterministic=deterministic, example_ids=example_ids)


def main() -> None:
    rng = np.random.default_rng(0)
    model = AIBNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), deterministic=True)
    objective = ObjectiveConfig(beta=1e-3)  # the consistent KL in nats, c = 1: ObjectiveConfig's defaults
    tx = optax.adam(2e-3)
    state = TrainState.create(variables, tx, jax.random.PRNGKey(1))
    train_step = jax.jit(make_train_step(model, tx, StepConfig(objective=objective)))  # one device, no axis

    @jax.jit
    def held_out(state: TrainState, batch: dict) -> tuple[jax.Array, jax.Array]:
        out = model.apply(state.variables(), batch["image"], deterministic=True)  # the zero-noise mean path
        loss, _ = aib_loss(out, batch["label"], objective)
        return loss, jnp.mean(jnp.argmax(out.logits, -1) == batch["label"])

    test = make_batch(np.random.default_rng(1), 256)
    first_loss, first_acc = held_out(state, test)
    losses = []
    for step in range(1, STEPS + 1):
        state, metrics = train_step(state, make_batch(rng))
        losses.append(float(metrics["total"]))
        if step == 1 or step % 10 == 0:
            print(f"step {step:3d}  loss {losses[-1]:.4f}  ce {float(metrics['ce']):.4f}  "
                  f"kl {float(metrics['kl']):.1f} nats  accuracy {float(metrics['accuracy']):.2f}", flush=True)
    last_loss, last_acc = held_out(state, test)
    print(f"held-out loss {float(first_loss):.4f} -> {float(last_loss):.4f}, "
          f"accuracy {float(first_acc):.2f} -> {float(last_acc):.2f}")
    if not float(last_loss) < float(first_loss) or not np.mean(losses[-5:]) < np.mean(losses[:5]):
        raise SystemExit("the loss did not go down")
    print("the loss went down")


if __name__ == "__main__":
    main()
