"""adv_lib's LPIPS references ``torchvision.models.alexnet``; the benchmarks never build it."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is a stand-in here (benchmarks/stubs); pretrained models are unavailable")


alexnet = vgg16 = resnet18 = _unavailable
