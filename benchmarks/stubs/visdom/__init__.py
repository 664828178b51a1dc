"""Stand-in for visdom so adv_lib imports; see benchmarks/stubs/README.md."""


class Visdom:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("visdom is a stand-in here (benchmarks/stubs); live plotting is unavailable")
