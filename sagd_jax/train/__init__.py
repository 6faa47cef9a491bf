"""The training loop and its periodic work (logging, checkpoints, samples, evaluation,
profiling, preemption). The train state and the pure step live below the run object, in
``sagd_jax.train_state`` and ``sagd_jax.train_step``."""
