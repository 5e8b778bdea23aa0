"""twostage_jax: a JAX/Flax two-stage behaviour-correction agent for vision-based manipulation.

The public API is re-exported here name by name; see README.md for an overview.
"""

from twostage_jax.actions import (
    DEFAULT_CLIP,
    DEFAULT_SIGMA,
    action_to_pose,
    atanh_clipped,
    compose_correction,
    compose_direct,
    pose_to_action,
    sample_tentative,
)
from twostage_jax.bc import BCAux, BCMetrics, bc_loss, make_bc_update
from twostage_jax.cql import (
    ActorAux,
    AlphaAux,
    CQLConfig,
    CQLMetrics,
    CriticAux,
    RegularizerAux,
    actor_loss,
    alpha_loss,
    cql_critic_loss,
    cql_regularizer,
    init_cql_params,
    make_cql_optimizer,
    make_cql_update,
)
from twostage_jax.envs.base import Env, Observation
from twostage_jax.evaluation import Episode, Interval, bootstrap_interval, difference_interval, rollout
from twostage_jax.geometry import (
    crop_by_projection,
    euler_to_matrix,
    euler_to_quat,
    look_at,
    optical_axis_angle,
    project_points,
    quat_to_euler,
)
from twostage_jax.networks import (
    NetworkConfig,
    Networks,
    conv2d_patches,
    deterministic_action,
    make_networks,
    resolve_conv_impl,
    tanh_gaussian_sample,
)
from twostage_jax.policy import PolicyOutput, make_policy
from twostage_jax.state import AgentState
from twostage_jax.training import (
    SEED_STRATEGIES,
    Stage2Config,
    TrainConfig,
    TrainData,
    Trainer,
    make_train,
    make_seed_runner,
    make_trainer,
    prepare_data,
    sample_batch,
    train_seeds,
)
from twostage_jax.transform import crop_at_action, transform_state
from twostage_jax.types import (
    ACTION_DIM,
    Batch,
    Camera,
    Dataset,
    Stage1Obs,
    Stage2Obs,
    Workspace,
    validate_dataset,
)

__version__ = "0.1.0"
