"""
Class check: stage 3 draws an image again when classifiers trained on the run's own training images do not
recognise it as its class.

A generated training set is only as good as its labels. Some samples of a class drift towards another one
(on a measured set, generated *falls* that look like *drinks*). So stage 3 fits len(CHECK_SEEDS) small
classifiers (pipeline.evaluate's SmallCNN and training, other seeds) on the tokenizer's decoding of up to
PER_CLASS training latents per class: their round trips, through the same decoder as the generated images, so
that the classifiers judge class content and not the decoder's texture. While most of them assign an image to
another class it is drawn again from the same training image with new seeds (pipeline.generate.redraw_seed's `draw`),
at most MAX_CLASS_DRAWS times; an image never recognised keeps its last draw (samples.json counts both).
Every image is seen the way the evaluation reads a written one (pipeline.evaluate.read_back_view: 8 bits, the
data's colour mode, 64 px), and the classifiers are trained once per run with fixed seeds and deterministic
kernels, so image k still depends only on (seed, class, k) and the settings (as with the copy check, a vote
exactly on the edge could follow a last-bit difference of the decoder between batch sizes; the tests compare
batch sizes 1 and 7 with redraws).

Measured on the quality benchmark (bench/RESULTS.md, eleventh session): the generated and the augmented
accuracy rise (on a simulated set by 0.06 and 0.03); tstr moves by less than one draw's noise. Seeing the images
the evaluation's way instead of through a bilinear resize of its own changed the benchmark's means by less than
one draw's noise (thirteenth session).
"""

import torch

from pipeline.evaluate import cached_classifier, predict

CHECK_SEEDS = (100, 101, 102)   # not the evaluation's classifier seeds (0, 1, 2)
MAX_CLASS_DRAWS = 3             # drawings after the first one
PER_CLASS = 200                 # training images per class the classifiers learn from (each one is decoded)


def spread_subset(latents, limit=PER_CLASS):
    """At most `limit` of a class's training latents (n, ...), evenly spaced over the n: all of a small class,
    and on a large one a bounded decoding cost (5,000 images at 256 px take minutes to decode on a T4)."""
    if len(latents) <= limit:
        return latents
    return latents[torch.linspace(0, len(latents) - 1, limit).round().long()]


def fit_class_check(train_images, train_labels, num_classes, device="cpu", seeds=CHECK_SEEDS):
    """Classifiers (one per seed) on read_back_view images (N, 3, 64, 64) of the training images with labels (N,),
    trained on `device` with deterministic kernels (a resumed run must make the same decisions) and cached
    with the evaluation's classifiers, so that stage 3 runs on the same run train them once."""
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        return [cached_classifier(train_images, train_labels, num_classes, seed, device) for seed in seeds]
    finally:
        torch.backends.cudnn.deterministic = deterministic


def recognised(classifiers, views, labels):
    """(B,) bool: a majority of `classifiers` assign view i (read_back_view) to class labels[i]."""
    votes = torch.stack([predict(clf, views)[0] == labels for clf in classifiers]).sum(0)
    return votes * 2 > len(classifiers)
