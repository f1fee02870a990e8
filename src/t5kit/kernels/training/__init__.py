"""Hand-written autograd Functions for CPU training, each beside the plain module it replaces."""
