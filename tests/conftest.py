import os

# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The models here are tiny: one intra-op thread per process avoids oversubscription (2 cores, DDP tests run 2 ranks).
os.environ.setdefault("OMP_NUM_THREADS", "1")
