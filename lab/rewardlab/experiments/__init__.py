"""Small-scale reproductions of the LSC paper's claims (``rewardserve experiment best-of-k|rlhf``).

``stats`` holds the pure statistics (bootstrap intervals, best-of-k selection and its metrics);
``best_of_k`` and ``rlhf`` generate, score, and write JSON, PNG and a Markdown summary.
"""
