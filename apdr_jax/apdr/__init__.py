"""APDR (SQAIR): AIR over image sequences, notes §8 with DESIGN §3.

Each frame `t` runs two phases over `N` fixed object slots:

* **Propagation** (eq. 24-26): a masked `lax.scan` over the previous frame's
  objects (compacted to the front). Object `i` takes a glimpse around the
  location its prior predicts (or its previous one; `propagation_glimpse`),
  and from it, its previous latents, the temporal state
  `h^q_t` and the relation state `h^{P,i}_t` (an RNN over the objects
  propagated before it) samples survival `b^{P,i}` and new latents.
* **Discovery** (eq. 27-28) *is* `air.infer`, conditioned on the relation
  state after the last object (`context = h^{P,k_t}`) and limited to
  `N - k_t` steps.

The prior (eq. 13-16) runs one prior RNN per object (shared weights, its own
state; newly discovered objects start from the learned initial state) for
survival and a Gaussian transition of `z_where` and `z_what`; discovery uses
AIR's prior truncated at `N - k_t`. After both phases the present objects are
compacted to the front in a stable order; a propagated object keeps its id,
and discovered objects get fresh ids.

The log-weight is split per frame (DESIGN §3.3): `w_t = log p(x_t | z_t) +
log p(z_t, n_t, k_t | past) - log q(z_t, n_t, k_t | x_t, past)`, ordered as
`[propagation slots (N), discovery slots (N), likelihood]`, so that the
objectives in `objectives.py` give each presence decision the credit of only
the terms it can influence (the later ones). Time is a `lax.scan`.
"""

from apdr_jax.apdr.config import APDRConfig
from apdr_jax.apdr.frame import FrameOutputs
from apdr_jax.apdr.frame import frame_step
from apdr_jax.apdr.networks import APDRNetworks
from apdr_jax.apdr.networks import init_params
from apdr_jax.apdr.prediction import predict
from apdr_jax.apdr.propagation import propagate
from apdr_jax.apdr.search import search_candidates
from apdr_jax.apdr.search import search_modes
from apdr_jax.apdr.sequence import SequenceTerms
from apdr_jax.apdr.sequence import image_gates
from apdr_jax.apdr.sequence import log_weight_terms
from apdr_jax.apdr.sequence import sample_log_weight_terms
from apdr_jax.apdr.state import Carry
from apdr_jax.apdr.state import Objects
from apdr_jax.apdr.state import Propagated
from apdr_jax.apdr.state import initial_carry

__all__ = [
    "APDRConfig", "APDRNetworks", "Carry", "FrameOutputs", "Objects",
    "Propagated", "SequenceTerms", "frame_step", "image_gates", "init_params",
    "initial_carry", "log_weight_terms", "predict", "propagate",
    "sample_log_weight_terms", "search_candidates", "search_modes",
]
