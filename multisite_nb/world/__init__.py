"""The embedded deployment: a real Rucio server and its daemons, one Butler per site, synthetic data
from a world spec, and the stand-in pipeline task. Beside the library, not part of its layers: it uses
the domain and the adapters, and only the command line imports it."""
