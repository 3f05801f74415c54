"""`python -m genlab.train.torchrun ...`: torchrun (torch.distributed.run) whose Ctrl-C ends quietly.

torchrun's agent turns SIGINT/SIGTERM into a SignalException after forwarding the signal to the
workers and waiting for them; uncaught, it prints a traceback over genlab's one-line messages. Here
it ends with exit status 130 instead; everything else is torchrun's own behaviour.
"""

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except SignalException:
        sys.exit(130)
