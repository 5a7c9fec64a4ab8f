"""MergeRec core library: data, text features, model, training, evaluation, merging,
pseudo-user distillation and the in-process reference pipeline. No Flower imports here."""
