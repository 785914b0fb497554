"""Toy simulations: a softmax bandit (bandit), an enumerable autoregressive model (sequence) and
instability sweeps (instability), all trained with sharpening.objective's rewards, advantages and loss."""
