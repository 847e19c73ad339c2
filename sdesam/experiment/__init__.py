"""Experiment support: the one record schema every data file follows
(:mod:`~sdesam.experiment.records`), where runs write and the checks before they do
(:mod:`~sdesam.experiment.outputs`), the flags every experiment shares
(:mod:`~sdesam.experiment.arguments`) and the digits-network protocol
(:mod:`~sdesam.experiment.digits`)."""
