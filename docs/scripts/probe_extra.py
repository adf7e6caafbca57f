"""Which objects does q's single pass keep too many? (issue #21 diagnostic)

PYTHONPATH=. python docs/scripts/probe_extra.py runs/mix_clip train 200
"""
import sys
import numpy as np
from scipy import optimize
import apdr_jax
from apdr_jax import input_pipeline

workdir, split, num = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = apdr_jax.load(workdir)
train, test = input_pipeline.load_data(model.config)
d = train if split == "train" else test
x = np.asarray(d["images"][:num])
out = model.decompose(x)
centre = lambda b: np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1)
tb, tp = np.asarray(d["boxes"][:num]), np.asarray(d["presence"][:num]) > 0
pb, pp = out["boxes"], out["presence"] > 0.5
kinds = dict(duplicate=0, departed=0, blank=0, other=0)
over = under = frames = 0
by_t_over = np.zeros(x.shape[1]); ink_extra = []; recon_ink = []
for s in range(num):
  for t in range(x.shape[1]):
    frames += 1
    nt, npred = tp[s, t].sum(), pp[s, t].sum()
    over += npred > nt; under += npred < nt
    if npred <= nt:
      continue
    by_t_over[t] += 1
    tc, pc = centre(tb[s, t][tp[s, t]]), centre(pb[s, t][pp[s, t]])
    pboxes = pb[s, t][pp[s, t]]
    matched = set()
    if len(tc):
      cost = np.linalg.norm(tc[:, None] - pc[None], axis=-1)
      r, c = optimize.linear_sum_assignment(cost)
      matched = {j for i, j in zip(r, c) if cost[i, j] <= 8}
    for j in range(len(pc)):
      if j in matched:
        continue
      x0, y0, x1, y1 = np.clip(np.round(pboxes[j]).astype(int), 0, x.shape[-1])
      patch = x[s, t, y0:y1, x0:x1].astype(np.float32) / 255
      rpatch = out["reconstructions"][s, t, y0:y1, x0:x1]
      ink = patch.mean() if patch.size else 0.0
      ink_extra.append(ink); recon_ink.append(rpatch.mean() if rpatch.size else 0.0)
      others = [k for k in matched]
      if any(np.linalg.norm(pc[j] - pc[k]) < 8 for k in others):
        kinds["duplicate"] += 1
      elif any((tp[s, :t, m].any() and not tp[s, t, m] and
                np.linalg.norm(centre(tb[s, max(i for i in range(t) if tp[s, i, m]), m]) - pc[j]) < 12)
               for m in range(tp.shape[2])):
        kinds["departed"] += 1
      elif ink < 0.05:
        kinds["blank"] += 1
      else:
        kinds["other"] += 1
print(f"{workdir} {split} {num}: frames {frames}, over {over} ({over/frames:.1%}), under {under} ({under/frames:.1%})")
print("over-counted frames by index:", by_t_over.astype(int).tolist())
print("extra objects by kind:", kinds)
if ink_extra:
  print(f"extra objects: mean input ink in box {np.mean(ink_extra):.3f}, mean reconstruction in box {np.mean(recon_ink):.3f}")
