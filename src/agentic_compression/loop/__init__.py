"""The experiment loop: an Experiment's lifecycle, its episodes, workers, records and resume."""
