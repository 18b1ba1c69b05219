"""rewardlab: research and training tools around rewardserve (trainer client, calibration, head
training and evaluation, experiments, base-policy loader, dataset readers)."""
