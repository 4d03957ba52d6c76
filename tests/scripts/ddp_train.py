"""Run `train` under `accelerate launch` and save this rank's final adapter (for the DDP test)."""

import os
import sys

from safetensors.torch import save_file

from hv_tune.config import load_config
from hv_tune.training.trainer import train

if __name__ == "__main__":
    out_dir, overrides = sys.argv[1], sys.argv[2:]
    result = train(load_config(None, overrides))
    save_file(result.adapter, os.path.join(out_dir, f"rank{os.environ.get('RANK', '0')}.safetensors"))
    print(f"rank {os.environ.get('RANK')} world {os.environ.get('WORLD_SIZE')} steps {result.steps}")
