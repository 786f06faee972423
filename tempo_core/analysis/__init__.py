"""The analysis wing, above the algorithm: what is measured of finished runs, and the study over many prompts.

after_run.py       a run with the analyses its settings ask for (`tempo_core.generate`, `tempo_core.run`)
replay.py          a finished run fed again in one forward (its merged distributions, its inputs)
faithfulness.py    does one superposed sequence approximate the explicit branches it stands for
commitment.py      the logit lens of every step at every layer
baselines.py       greedy and beam search beside a TEMPO run
sweep.py           one prompt across selection thresholds, each run reusing the prefix the one before made
stats.py           bootstrap intervals over prompts
study.py           the study: its settings, one prompt's records, the summary (study_measures.py: the measures;
                   study_command.py: `python -m tempo_core study`)
report.py          the results as text: a run's faithfulness and commitment lines, the study's table
"""
