"""DrQ (Kostrikov, Yarats & Fergus 2021) as a configs/sac.py option set: pixel SAC with DrQ's
augmentation averaging and recipe, the DMC baseline whose learning curves DrQ's repository publishes
(`data/dmc_planet_bench.csv`: cartpole_swingup means 182, 274, 360, 450, 661, 759 at 16k ... 96k
environment steps, 10 seeds).

Run:   python launch/dmc.py --config configs/drq.py --config.env.task=cartpole_swingup
Smoke: python launch/dmc.py --config configs/drq.py:smoke

Every value below is DrQ's, cited to its code (denisyarats/drq: `config.yaml`, `drq.py`,
`replay_buffer.py`, `utils.py`, `train.py`); what is not set here is configs/sac.py's and equals
DrQ's too (gamma 0.99, 4 convs of 32 filters with strides 2, 1, 1, 1, latent 50 with LayerNorm,
MLPs (1024, 1024), log-std bounds [-10, 2], one update per agent step, PlaNet action repeats,
target entropy -|A|). Same agent code as SAC:
`agent.target_augmentations` / `agent.q_augmentations` are the only DrQ-specific code path
(agents/sac.py).
"""

import ml_collections

from configs import sac


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "smoke"):
        raise ValueError(f"unknown variant {variant!r} of configs/drq.py (known: 'smoke')")
    c = sac.get_config(variant)
    c.name = "drq-smoke" if variant == "smoke" else "drq"

    a = c.agent
    a.target_augmentations = 2  # K: the target averaged over 2 views of o' (drq.py update_critic)
    a.q_augmentations = 2  # M: the twin-Q losses on 2 views of o, summed (drq.py update_critic)
    a.learning_rate = 1e-3  # actor, critic and temperature (config.yaml `lr`)
    a.learning_rate_per_task = ml_collections.ConfigDict()  # config.yaml has one lr for every task
    a.alpha_learning_rate = 1e-3  # log_alpha_optimizer = Adam(lr=lr) (drq.py)
    a.alpha_b1 = 0.9  # torch.optim.Adam's default betas (0.9, 0.999)
    a.init_temperature = 0.1  # config.yaml
    a.critic_tau = 0.01  # soft_update_params over the whole critic (utils.py)...
    a.encoder_tau = 0.01  # ...its encoder included
    a.critic_target_update_every = 2  # config.yaml critic_target_update_frequency
    a.actor_update_every = 2  # config.yaml actor_update_frequency (actor and temperature)
    a.trunk_tanh = True  # Encoder.output_logits = False: tanh after the LayerNorm (drq.py)
    a.weight_init = "orthogonal_flat"  # utils.weight_init: orthogonal_ on whole conv kernels, gain sqrt 2
    a.augmentation.enabled = True
    a.augmentation.translate_pad = 4  # ReplicationPad2d(image_pad 4) + RandomCrop(84) (replay_buffer.py)
    c.env.stack_padding = "first_frame"  # utils.FrameStack fills the stack with the first frame
    if variant == "smoke":  # configs/sac.py:smoke's sizes, rendered at the crop size as below
        c.env.image_size = c.env.crop_size = 56
        a.augmentation.translate_pad = 2
        return c

    a.batch_size = 512  # config.yaml: "please use a batch size of 512 to reproduce the results in the paper"
    c.env.image_size = 84  # rendered at 84 (config.yaml image_size); no crop, only the shift above
    c.env.crop_size = 84
    c.replay.capacity = 100_000  # config.yaml replay_buffer_capacity
    c.replay.min_size = 1000  # config.yaml num_seed_steps (agent steps)
    return c
