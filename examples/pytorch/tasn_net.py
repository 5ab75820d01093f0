"""The TASN network of SPEC section 5 in PyTorch: torchvision ResNets, tasn_torch's operators.

    attention net (ResNet-18 form, multi-dilation head)  -> logits_att, features
    trilinear attention (no gradient) -> structure map (squared) and detail map
    attention sampler -> structure-preserved image (master-net input, student)
                      -> detail-preserved image (part-net input, teacher)
    one shared ResNet-50 over both as one batch of 2N -> part FC, master FC, shared FC on both
    losses (summed over the batch): CE(att), 0.5 x CE of the four heads, distillation(master <- part)

Presets mirror the C++ trainer's (examples/train/presets.h, docs/trainer.md): `demo` (small
ResNets of torchvision blocks, 96 px generated images, 8 classes) and `paper` (torchvision
resnet18 with stage strides 1,1,2,1 and resnet50; 512 px input, 224 px sampler output).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock

import tasn_torch as tt

# SPEC 5 / examples/train/model.h
BETA, DENSE, ITERS, TEMPERATURE, HEAD_SCALE, ATT_SCALE, DISTILL_WEIGHT = 7.0, 4.0, 5, 10.0, 0.5, 1.0, 1.0


def preset(name):
    if name == "demo":
        return dict(classes=8, image=96, att_input=32, out=32, att_backbone=("small", 16), master_backbone=("small", 32),
                    batch=32, epochs=4, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="onecycle",
                    train_size=4000, test_size=1000)
    if name == "paper":
        return dict(classes=200, image=512, att_input=224, out=224, att_backbone=("resnet18-1121", 0),
                    master_backbone=("resnet50", 0), batch=96, epochs=300, lr=0.1, momentum=0.0, weight_decay=0.0,
                    schedule="step", milestones=(100, 200), train_size=4000, test_size=1000)
    raise SystemExit("--preset must be demo or paper, got %r" % name)


class SmallResNet(nn.Module):
    """The demo backbone: 3x3 stem (stride 1, no pool), two stages of one torchvision BasicBlock
    each (width w, 2w; stride 2 each). torchvision parameter names (conv1, bn1, layer1, layer2)."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, 2)
        self.layer2 = self._stage(width, 2 * width, 2)
        self.features = 2 * width

    @staticmethod
    def _stage(cin, cout, stride):
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return nn.Sequential(BasicBlock(cin, cout, stride, down))

    def forward(self, x):
        return self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))


class TorchvisionTrunk(nn.Module):
    """A torchvision ResNet without avgpool and fc: its parameters keep torchvision's names, so an
    ImageNet state dict loads with load_torchvision()."""

    def __init__(self, kind):
        super().__init__()
        net = resnet50() if kind == "resnet50" else resnet18()
        if kind == "resnet18-1121":  # SPEC 5: stage strides 1, 1, 2, 1 (224 -> 28 x 28 x 512)
            for layer in (net.layer2, net.layer4):
                layer[0].conv1.stride = (1, 1)
                layer[0].downsample[0].stride = (1, 1)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))
        self.features = net.fc.in_features

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def backbone(spec):
    kind, width = spec
    return SmallResNet(width) if kind == "small" else TorchvisionTrunk(kind)


def load_torchvision(trunk, path):
    """Loads a torchvision ImageNet state dict (e.g. resnet50-*.pth) into a trunk; fc is dropped."""
    state = torch.load(path, map_location="cpu")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit("%s does not fit the backbone: missing %s, unexpected %s" % (path, missing[:5], unexpected[:5]))


class AttentionNet(nn.Module):
    """Backbone, then two shared-weight multi-dilation 3x3 convs (dilations 1,2 then 1,2,3; ReLU each,
    summed), BN, ReLU, global average pool, FC. Returns (logits, features before pooling)."""

    def __init__(self, spec, classes):
        super().__init__()
        self.backbone = backbone(spec)
        c = self.backbone.features
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    @staticmethod
    def _dilated_sum(x, conv, count):
        return sum(F.relu(F.conv2d(x, conv.weight, conv.bias, 1, d, d)) for d in range(1, count + 1))

    def forward(self, x):
        h = self._dilated_sum(self.backbone(x), self.conv1, 2)
        feat = F.relu(self.bn(self._dilated_sum(h, self.conv2, 3)))
        return self.fc(feat.mean((2, 3))), feat


def init_weights(model):
    """torchvision's initialisation (Kaiming normal fan_out for convs, BN 1/0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TasnNet(nn.Module):
    """forward(img, labels, step_seed, first_sample) -> (summed loss, logits dict). In eval mode the
    detail map is the channel sum (official Detail_Att) and no loss is formed without labels."""

    heads = ("tasn", "att", "part", "master", "part_shared")  # the keys of the logits dict

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.att = AttentionNet(p["att_backbone"], p["classes"])
        self.master = backbone(p["master_backbone"])
        f = self.master.features
        self.part_fc, self.master_fc, self.shared_fc = (nn.Linear(f, p["classes"]) for _ in range(3))
        init_weights(self)

    def sample(self, img, feat, step_seed, first_sample):
        """The detail- and structure-preserved images (no gradient: the official BlockGrad)."""
        out = (self.p["out"],) * 2
        with torch.no_grad():
            m = tt.trilinear_attention(feat.detach(), BETA)
            smap = tt.structure_map(m)
            dmap, _ = tt.detail_map(m, training=self.training, seed=step_seed, first_sample=first_sample)
            x_detail = tt.attention_sample(img, dmap, out, DENSE, ITERS)[0]
            x_struct = tt.attention_sample(img, smap, out, DENSE, ITERS, squared=True)[0]
        return x_detail, x_struct

    def forward(self, img, labels=None, step_seed=0, first_sample=0):
        p, n = self.p, img.shape[0]
        small = F.interpolate(img, size=(p["att_input"],) * 2, mode="bilinear", align_corners=True)
        z_att, feat = self.att(small)
        x_detail, x_struct = self.sample(img, feat, step_seed, first_sample)
        pooled = self.master(torch.cat([x_detail, x_struct])).mean((2, 3))  # one batch of 2N
        z_part, z_master = self.part_fc(pooled[:n]), self.master_fc(pooled[n:])
        z_shared = self.shared_fc(pooled)
        logits = dict(tasn=z_shared[n:], att=z_att, part=z_part, master=z_master, part_shared=z_shared[:n])
        if labels is None:
            return None, logits

        def ce(z, scale):
            return tt.softmax_cross_entropy(z, labels, grad_scale=scale, reduction="sum")

        loss = (ce(z_att, ATT_SCALE) + ce(z_part, HEAD_SCALE) + ce(z_master, HEAD_SCALE) + ce(z_shared[:n], HEAD_SCALE)
                + ce(z_shared[n:], HEAD_SCALE)
                + DISTILL_WEIGHT * tt.distillation_loss(z_master, z_part, TEMPERATURE, reduction="sum"))
        return loss, logits


class BaselineNet(nn.Module):
    """The master backbone alone on the image resized to the sampler's output size, one FC."""

    heads = ("baseline",)

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.master = backbone(p["master_backbone"])
        self.fc = nn.Linear(self.master.features, p["classes"])
        init_weights(self)

    def forward(self, img, labels=None, step_seed=0, first_sample=0):
        x = F.interpolate(img, size=(self.p["out"],) * 2, mode="bilinear", align_corners=True)
        z = self.fc(self.master(x).mean((2, 3)))
        loss = None if labels is None else tt.softmax_cross_entropy(z, labels, reduction="sum")
        return loss, dict(baseline=z)
