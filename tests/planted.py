"""The planted rows the monitor, masking, DDP and Trainer tests train on (M = N = 8): four
rows seen often (memorized within a few dozen steps), four seen sometimes, eight once."""

import torch

from memwatch.demos.model import planted_corpus

M = N = 8
CORPUS = planted_corpus([16] * 4 + [4] * 4 + [1] * 8, seq_len=M + N, vocab_size=512, seed=0)
STREAM = CORPUS.stream(seed=0)
TAGS = [("canary",)] * 4 + [("sample",)] * 12


class Rows(torch.utils.data.Dataset):
    """The stream as dict examples; labels a copy, which a masking collator may replace."""

    def __len__(self):
        return len(STREAM)

    def __getitem__(self, i):
        return {"input_ids": STREAM[i], "labels": STREAM[i].clone()}
