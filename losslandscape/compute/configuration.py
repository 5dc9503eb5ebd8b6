"""A compute configuration (memory layout, batch size, BatchNorm folding) and its record in a
surface file: what a file says its points were computed with, and the refusal of flags that would
compute its other points otherwise (see compute.choosing for how a run settles its configuration)."""
import dataclasses
import json
import os

from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout

MODES = ('auto', 'search', 'plain')
SURFACE, HESSIAN = 'surface', 'hessian'   # the kinds of run a record keeps apart (one file may hold both)
GRADIENT = 'gradient'                     # sharpness.py's batch size (timing cache only: it writes no surface)
FIELDS = ('channels_last', 'batch_size', 'fold_bn')


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """How a point's forward passes are computed (grid_args.py: the flags of the same names)."""
    channels_last: bool = False
    batch_size: int = 128
    fold_bn: bool = False

    def describe(self):
        """E.g. 'channels_last, batch 64, BatchNorm folded' or 'batch 128' (the default layout, unfolded)."""
        parts = (['channels_last'] if self.channels_last else []) + [f'batch {self.batch_size}']
        return ', '.join(parts + (['BatchNorm folded'] if self.fold_bn else []))

    def apply(self, settings):
        """``settings`` (a run_setup.RunSettings) with this configuration's parts set."""
        return dataclasses.replace(settings, **dataclasses.asdict(self))


PLAIN = ComputeConfig()


@dataclasses.dataclass(frozen=True)
class Choice:
    """The configuration a run uses, the line that says why, and the surface file's record of it
    (every kind's, this run's entry updated)."""
    config: ComputeConfig
    line: str
    record: dict


def given_parts(settings):
    """The parts fixed by flags given explicitly (None means: not given)."""
    return {name: getattr(settings, name) for name in FIELDS if getattr(settings, name) is not None}


def flag_text(name, value):
    if name == 'batch_size':
        return f'--batch_size {value}'
    return f'--{name}' if value else f'--no-{name}'


def with_parts(config, given):
    return dataclasses.replace(config, **given)


# ----------------------------------------------------------------------------- the record

def recorded_parts(surf_file, kind, known_only=False):
    """(the parts an existing surface file records for ``kind`` -- None when there is no such file,
    or it records configurations but none of this kind -- and its whole record). A file written
    before configurations were recorded gives its recorded flags, PLAIN's parts where they say
    nothing (``known_only``: only the parts its flags say)."""
    if not surf_file or not os.path.exists(surf_file):
        return None, {}
    surface = hdf5_layout.read_surface(surf_file)   # a damaged file: the run's own one-line refusal
    if hdf5_layout.COMPUTE_ATTR in surface.attrs:
        try:
            record = json.loads(surface.attrs[hdf5_layout.COMPUTE_ATTR])
        except ValueError:
            record = {}
        record = record if isinstance(record, dict) else {}
        return valid_parts(record.get(kind)), record
    # Written before configurations were recorded: computed as its flags said, plain where they say nothing.
    args = surface.args()
    known = {name: args[name] for name in FIELDS if valid_part(name, args.get(name))}
    return (known if known_only else {**dataclasses.asdict(PLAIN), **known}), {}


def refuse_changed_parts(settings, kind, surf_file):
    """Raise UsageError when the existing surface file ``surf_file`` records how its points of
    ``kind`` were computed and a flag given now (--batch_size, --[no-]channels_last, --[no-]fold_bn,
    --compute_config plain) asks for another part: the points added would round otherwise, the
    file would end unlike an uninterrupted run of either configuration, and its record could tell
    only one. Parts a file does not record (the original code's files) are the flags' to set."""
    recorded, _ = recorded_parts(surf_file, kind, known_only=True)
    if not recorded:
        return
    given = given_parts(settings)
    asked = {**(dataclasses.asdict(PLAIN) if settings.compute_config == 'plain' else {}), **given}
    changed = [name for name in FIELDS if name in asked and name in recorded and asked[name] != recorded[name]]
    if not changed:
        return
    flags = [flag_text(name, asked[name]) for name in changed if name in given]
    if any(name not in given for name in changed):
        flags.append('--compute_config plain')
    was = ', '.join(flag_text(name, recorded[name]) for name in changed)
    raise UsageError(f'surface file {surf_file!r} was computed with {was}; {" ".join(flags)} would compute its '
                     f'other points otherwise: rerun without {"it" if len(flags) == 1 else "them"} to finish '
                     'the file as it was begun, or pass another --surf_file')


def valid_part(name, value):
    if name == 'batch_size':
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return isinstance(value, bool)


def valid_parts(entry):
    """A record entry's parts, or None when it is not a whole, valid one."""
    if not isinstance(entry, dict) or not all(valid_part(name, entry.get(name)) for name in FIELDS):
        return None
    return {name: entry[name] for name in FIELDS}
