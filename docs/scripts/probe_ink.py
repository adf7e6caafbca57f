"""Own ink (sum of each object's rendered drawing on the canvas) of matched
vs extra objects in q's single pass. PYTHONPATH=. python docs/scripts/probe_ink.py runs/mix_clip train 200"""
import sys
import numpy as np, jax, jax.numpy as jnp
from scipy import optimize
import apdr_jax
from apdr_jax import apdr, input_pipeline, sequence_evaluation as se
from apdr_jax.apdr import propagation

workdir, split, num = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = apdr_jax.load(workdir)
mc, params = model.model_config, model.params
train, test = input_pipeline.load_data(model.config)
d = train if split == "train" else test
x = np.asarray(d["images"][:num]).astype(np.float32) / 255
frames = [jax.device_get(se.apdr_modes(mc, params, jnp.asarray(x[i:i + 100]), False))
          for i in range(0, num, 100)]
pres, zw, zwh = (np.concatenate([getattr(f, k) for f in frames])
                 for k in ("presence", "z_where", "z_what"))
n = pres.shape[-1]
objects = apdr.Objects(zw.reshape(-1, n, 3), zwh.reshape(-1, n, zwh.shape[-1]),
                       pres.reshape(-1, n), None, None, None)
ink = np.asarray(propagation.drawn_ink(mc, params, objects)).reshape(pres.shape)
boxes = se.pixel_boxes(mc, zw)
centre = lambda b: np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1)
tb, tp = np.asarray(d["boxes"][:num]), np.asarray(d["presence"][:num]) > 0
matched_ink, extra_ink = [], []
for s in range(num):
  for t in range(x.shape[1]):
    idx = np.where(pres[s, t] > 0.5)[0]
    tc, pc = centre(tb[s, t][tp[s, t]]), centre(boxes[s, t][idx])
    m = set()
    if len(tc) and len(pc):
      cost = np.linalg.norm(tc[:, None] - pc[None], axis=-1)
      r, c = optimize.linear_sum_assignment(cost)
      m = {j for i, j in zip(r, c) if cost[i, j] <= 8}
    for j, k in enumerate(idx):
      (matched_ink if j in m else extra_ink).append(ink[s, t, k])
q = [0, 1, 5, 10, 25, 50, 75, 90]
print(split, "matched", len(matched_ink), np.percentile(matched_ink, q).round(2))
print(split, "extra", len(extra_ink), np.percentile(extra_ink, q).round(2) if extra_ink else None)
for c in [0.5, 1, 2, 5, 10]:
  print(f"ink<{c}: matched {np.mean(np.array(matched_ink) < c):.3%} extra {np.mean(np.array(extra_ink) < c):.3%}")
truth = tp.sum(-1)
for c in [0, 1, 2, 3, 5, 8, 10]:
  counts = ((pres > 0.5) & (ink >= c)).sum(-1)
  acc = (counts == truth).mean(); over = (counts > truth).mean(); under = (counts < truth).mean()
  print(f"count objects with ink>={c}: acc {acc:.2%} over {over:.2%} under {under:.2%} first {np.mean(counts[:,0]==truth[:,0]):.1%} last {np.mean(counts[:,-1]==truth[:,-1]):.1%}")
