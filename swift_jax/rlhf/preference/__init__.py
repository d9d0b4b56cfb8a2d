"""Preference training: DPO family, CPO/SimPO, ORPO, KTO and reward models (offline pairs, one forward per pair).

    args.py           RLHFArgs (ms-swift's names and defaults)
    rows.py           preference row formats -> chosen / rejected conversations
    data.py           pairs -> rows of whole pairs (padded or packed), a DataPipeline; streaming.py: the same, streamed
    sampler_order.py  the row order of ms-swift's trainers (so curves compare step by step)
    losses.py         the losses as pure functions of per-sequence log-probs (ms-swift 4.6 / TRL formulas)
    logps.py          per-answer log-probs of one forward over pair rows
    precompute.py     --precompute_ref_log_probs: the reference's values, once, before training
    methods.py        the trainer Methods (DPO, CPO, ORPO, KTO, RewardModel) and their reference models
"""
