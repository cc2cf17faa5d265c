"""Offline evaluation, in one place: what ``r2rank-train eval`` and ``diagnose`` measure and how.

- ``cases``: the protocol (per user, 1 positive + N negatives at a held-out position; ``selection`` or ``test``);
- ``metrics``: NDCG@10, HR@5/10, MRR per user, bootstrap CIs and paired differences;
- ``baselines``: popularity, co-occurrence, the teacher's evidence model, the sequence model (SASRec);
- ``serving``: a checkpoint scored through the service's own ``Ranker`` on vLLM, rationales checked;
- ``report``: JSON, Markdown and PNG;
- ``run``: the whole evaluation the command runs, ranks stored so later reports pair on the same users;
- ``fusion``: the evidence's ceiling, the teacher's logistic against a nonlinear fusion of the same features.
"""
