"""The detection family: online action detection over streaming features.

args.py      DetectionData, DetectionTrain, DetectionArgs
features.py  per-video feature files and labels
synth.py     the generated synthetic streaming benchmark
oadtr.py     OadTR and the GRU/LSTM baseline detectors
metrics.py   per-class frame AP and calibrated AP
stream.py    frame-by-frame streaming detection (`genlab detect`)
task.py      DetectionTask
presets.py   oadtr-synth, gru-synth
"""

from genlab.config import Family, register
from genlab.families.detection.args import DetectionArgs, DetectionData, DetectionTrain
from genlab.families.detection.presets import PRESETS
from genlab.families.detection.task import DetectionTask

FAMILY = register(
    Family("detection", "detection", DetectionData, DetectionArgs, DetectionTrain, DetectionTask, None, PRESETS)
)
