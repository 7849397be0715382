"""BadNets poisoning: exact poison counts, labels, modes, and bad-input errors."""
import numpy as np
import pytest
import torch

from poisonlab.attacks import BadNets, build_attack
from poisonlab.data.base import Dataset
from poisonlab.errors import PoisonlabError

PIXEL = {"kind": "single-pixel", "corner": "bottom-right", "margin": 0}


def make(**kw):
    return BadNets.from_config({"trigger": PIXEL, **kw})


def test_single_target_all_but_target_counts_and_labels(tiny_images):
    attack = make(p=0.2, target=1)
    res = attack.poison(tiny_images, np.random.default_rng(0))
    n = int(np.floor(0.2 * 30))
    assert res.n_poison == n == 6
    assert len(res.dataset) == 30 + n
    assert torch.equal(res.poison_mask, torch.arange(36) >= 30)
    # the clean part is untouched
    assert torch.equal(res.dataset.x[:30], tiny_images.x) and torch.equal(res.dataset.y[:30], tiny_images.y)
    src = res.source_index[30:]
    assert (tiny_images.y[src] != 1).all()  # copies of non-target classes only
    assert (res.dataset.y[30:] == 1).all()
    # each poison row is its source image with the bottom-right pixel set to 1
    expected = tiny_images.x[src].clone()
    expected[:, :, -1, -1] = 1.0
    assert torch.equal(res.dataset.x[30:], expected)
    assert len(set(src.tolist())) == n  # drawn without replacement


def test_single_source_filter(tiny_images):
    res = make(p=0.3, target=0, source=2).poison(tiny_images, np.random.default_rng(1))
    assert res.n_poison == 9
    assert (tiny_images.y[res.source_index[30:]] == 2).all()
    assert (res.dataset.y[30:] == 0).all()


def test_all_to_all_labels(tiny_images):
    res = make(p=1.0, labels="all-to-all").poison(tiny_images, np.random.default_rng(2))
    assert res.n_poison == 30
    src = res.source_index[30:]
    assert torch.equal(res.dataset.y[30:], (tiny_images.y[src] + 1) % 3)


def test_replace_mode_keeps_size(tiny_images):
    res = make(p=0.5, target=0, mode="replace").poison(tiny_images, np.random.default_rng(3))
    assert len(res.dataset) == 30 and res.n_poison == 15
    changed = res.poison_mask
    assert (res.dataset.y[changed] == 0).all()
    assert torch.equal(res.dataset.y[~changed], tiny_images.y[~changed])
    assert (res.dataset.x[changed][:, 0, -1, -1] == 1).all()
    assert torch.equal(res.dataset.x[~changed], tiny_images.x[~changed])


def test_same_rng_same_poison(tiny_images):
    a = make(p=0.2).poison(tiny_images, np.random.default_rng(5))
    b = make(p=0.2).poison(tiny_images, np.random.default_rng(5))
    assert torch.equal(a.source_index, b.source_index)


def test_evaluation_set_excludes_target_class(tiny_images):
    ev = make(p=0.1, target=1).evaluation_set(tiny_images)
    assert len(ev.x) == 20 and (ev.true != 1).all() and (ev.target == 1).all()
    assert (ev.x[:, 0, -1, -1] == 1).all()
    assert torch.equal(ev.true, tiny_images.y[ev.rows])
    ev_all = make(p=0.1, labels="all-to-all").evaluation_set(tiny_images)
    assert len(ev_all.x) == 30 and torch.equal(ev_all.target, (ev_all.true + 1) % 3)


@pytest.mark.parametrize("kw,message", [
    ({"p": 0.0}, r"attack.p must be in \(0, 1\], got 0.0"),
    ({"p": 1.5}, r"attack.p must be in \(0, 1\], got 1.5"),
])
def test_p_out_of_range(kw, message):
    with pytest.raises(PoisonlabError, match=message):
        make(**kw)


def test_class_out_of_range_and_source_errors(tiny_images):
    with pytest.raises(PoisonlabError, match=r"attack.target 3 is out of range; the data set has classes 0..2"):
        make(target=3).check(tiny_images)
    with pytest.raises(PoisonlabError, match=r"attack.source 5 is out of range"):
        make(target=0, source=5).check(tiny_images)
    with pytest.raises(PoisonlabError, match="equals the target"):
        make(target=0, source=0).check(tiny_images)
    with pytest.raises(PoisonlabError, match="only 10 training images are of the source classes"):
        make(p=0.5, target=0, source=1).poison(tiny_images, np.random.default_rng(0))


def test_trigger_that_does_not_fit(tiny_images):
    attack = make(trigger={"kind": "patch", "size": 7})
    with pytest.raises(PoisonlabError):
        attack.check(tiny_images)


def test_unknown_attack_and_key():
    with pytest.raises(PoisonlabError, match=r"unknown attack 'badnet' \(did you mean 'badnets'\?\)"):
        build_attack({"name": "badnet"})
    with pytest.raises(PoisonlabError, match=r"unknown config key 'attack.targt'"):
        build_attack({"name": "badnets", "targt": 1})


def test_non_image_data_rejected():
    ds = Dataset(torch.rand(10, 4), torch.arange(10) % 2, ["a", "b"])
    with pytest.raises(PoisonlabError, match="no images"):
        make().check(ds)


def test_random_target_labels_differ_and_are_seeded(tiny_images):
    attack = make(p=1.0, labels="random")
    res = attack.poison(tiny_images, np.random.default_rng(4))
    src = res.source_index[30:]
    new = res.dataset.y[30:]
    assert (new != tiny_images.y[src]).all() and ((new >= 0) & (new < 3)).all()
    assert len(set(new.tolist())) == 3  # not a fixed mapping
    again = attack.poison(tiny_images, np.random.default_rng(4))
    assert torch.equal(again.dataset.y, res.dataset.y)


def test_untargeted_success_counts_any_wrong_label(tiny_images):
    ev = make(p=0.1, labels="random").evaluation_set(tiny_images)
    assert ev.untargeted and len(ev.x) == 30
    pred = ev.true.clone()
    pred[:6] = (ev.true[:6] + 1) % 3   # 6 misclassified: successes whatever the label
    assert ev.success(pred).sum() == 6
    targeted = make(p=0.1, target=0).evaluation_set(tiny_images)
    pred = torch.full_like(targeted.true, 2)
    pred[:5] = 0
    assert targeted.success(pred).sum() == 5


def test_source_with_all_to_all_rejected(tiny_images):
    with pytest.raises(PoisonlabError, match="attack.source applies to labels 'single-target' and 'random' only; "
                                             "remove it for 'all-to-all'"):
        make(labels="all-to-all", source=1).check(tiny_images)
    with pytest.raises(PoisonlabError, match="attack.source 5 is out of range"):
        make(labels="random", source=5).check(tiny_images)


def test_random_target_from_one_source_class(tiny_images):
    attack = make(p=0.2, labels="random", source=1)
    res = attack.poison(tiny_images, np.random.default_rng(7))
    src = res.source_index[30:]
    assert res.n_poison == 6 and (tiny_images.y[src] == 1).all()   # floor(0.2 * 30) copies of class 1 only
    assert set(res.dataset.y[30:].tolist()) <= {0, 2}
    ev = attack.evaluation_set(tiny_images)
    assert ev.untargeted and len(ev.x) == 10 and (ev.true == 1).all()
