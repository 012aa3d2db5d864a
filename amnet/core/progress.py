"""Progress bars when tqdm is installed; plain iteration where it is not (the GPU check machines)."""


def progress_bar(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)
