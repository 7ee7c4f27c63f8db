"""seqio tasks: the embedded synthetic environment (golden reward) and file-backed preference data.

Importing this package registers the synthetic tasks with their defaults (`synthetic_sft`,
`synthetic_prompts`, `synthetic_dhf`, `synthetic_rm_pairwise`); data is generated lazily.
"""
from rso_jax.tasks import synthetic
from rso_jax.tasks.embedded import POLICY_FEATURE_LENGTHS
from rso_jax.tasks.embedded import register_synthetic_tasks
from rso_jax.tasks.embedded import RM_FEATURE_LENGTHS
from rso_jax.tasks.embedded import SYNTHETIC_TASKS
from rso_jax.tasks.experiment import experiment_tasks
from rso_jax.tasks.experiment import ranking_feature_lengths
from rso_jax.tasks.experiment import ranking_task
from rso_jax.tasks.preference_files import bad_record_stats
from rso_jax.tasks.preference_files import register_preference_file_task
from rso_jax.tasks.preference_files import reset_bad_record_stats
from rso_jax.tasks.preprocessors import count_truncated
from rso_jax.tasks.preprocessors import reset_truncation_stats
from rso_jax.tasks.preprocessors import truncation_stats
from rso_jax.tasks.synthetic import best_response
from rso_jax.tasks.synthetic import golden_reward
from rso_jax.tasks.synthetic import golden_rewards
from rso_jax.tasks.vocab import get_vocabulary
from rso_jax.tasks.vocab import synthetic_words_model

register_synthetic_tasks()
