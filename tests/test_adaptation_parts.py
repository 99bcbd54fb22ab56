"""The pieces of DANN and Subspace Alignment, checked against their definitions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from transferkit.methods import SubspaceAlignment
from transferkit.models import NETWORKS, DigitNetwork, GradientReversal, gradient_reversal
from transferkit.names import METHOD_NAMES, NETWORK_NAMES
from transferkit.training import annealed_learning_rate, grl_coefficient


@pytest.mark.parametrize("coefficient", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_backward_is_exactly_minus_lambda_times_the_gradient(coefficient):
    inputs = torch.randn(5, 7, requires_grad=True)
    incoming = torch.randn(5, 7)
    outputs = gradient_reversal(inputs, coefficient)
    assert torch.equal(outputs, inputs)
    outputs.backward(incoming)
    assert torch.equal(inputs.grad, -coefficient * incoming)


def test_gradient_reversal_module_uses_its_current_coefficient():
    layer = GradientReversal(0.25)
    inputs = torch.ones(3, requires_grad=True)
    layer.grl_coefficient = 0.75
    layer(inputs).sum().backward()
    assert torch.equal(inputs.grad, torch.full((3,), -0.75))


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_schedules_match_the_papers_formulas(progress):
    assert annealed_learning_rate(progress) == pytest.approx(0.01 / (1 + 10 * progress) ** 0.75)
    assert grl_coefficient(progress) == pytest.approx(2 / (1 + math.exp(-10 * progress)) - 1)


def test_schedules_start_and_end_where_the_paper_says():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) > 0.999
    assert annealed_learning_rate(0.0) == 0.01
    assert annealed_learning_rate(1.0) == pytest.approx(0.01 / 11**0.75)


@pytest.mark.parametrize(("name", "size", "features"),
                         [("mnist", 28, 48 * 4 * 4), ("svhn", 32, 128 * 7 * 7),
                          ("gtsrb", 40, 256 * 5 * 5)])
def test_paper_networks_give_class_logits_and_expected_feature_sizes(name, size, features):
    network = DigitNetwork(name, 10, size)
    assert network.feature_dim == features
    assert network(torch.zeros(2, 3, size, size)).shape == (2, 10)
    assert network.domain_classifier(torch.zeros(2, features)).shape == (2, 1)


def test_he_initialization_keeps_the_signal_and_starts_every_relu_active():
    torch.manual_seed(0)
    network = DigitNetwork("gtsrb", 43, 32)
    first = network.features[0]
    assert torch.all(first.bias == 0.1)
    fan_in = first.weight[0].numel()
    assert float(first.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    images = torch.randn(64, 3, 32, 32)
    he_logits = network(images).std()
    torch.manual_seed(0)
    default_logits = DigitNetwork("gtsrb", 43, 32, init="pytorch")(images).std()
    # PyTorch's default init shrinks the signal layer by layer; He's keeps its scale
    assert he_logits > 10 * default_logits
    with pytest.raises(ValueError, match="initialization"):
        DigitNetwork("mnist", 10, init="zeros")


def test_command_line_names_match_the_registries():
    from transferkit.methods import TRAINED_METHODS

    assert set(NETWORK_NAMES) == set(NETWORKS)
    assert set(TRAINED_METHODS) | {"sa"} == set(METHOD_NAMES)


def test_subspace_alignment_classifies_a_shifted_scaled_and_tilted_target():
    rng = np.random.default_rng(0)
    centers = np.zeros((3, 10))
    centers[:, :3] = 6.0 * np.eye(3)  # classes differ in the first three features
    labels, target_labels = rng.integers(0, 3, 600), rng.integers(0, 3, 600)
    source = centers[labels] + rng.normal(0, 1, (600, 10))
    angle = np.deg2rad(25)  # tilt the class subspace: feature 2 leaks into feature 3
    tilt = np.eye(10)
    tilt[2:4, 2:4] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    target = 3.0 * (centers[target_labels] + rng.normal(0, 1, (600, 10))) @ tilt + 5.0
    alignment = SubspaceAlignment(candidate_dimensions=(2, 3, 5), seed=0)
    alignment.fit(source[:500], labels[:500], target, source[500:], labels[500:])
    assert set(alignment.validation_accuracy) == {2, 3, 5}
    assert alignment.validation_accuracy[alignment.selected_dimension] == max(
        alignment.validation_accuracy.values())
    assert (alignment.predict(target) == target_labels).mean() > 0.9
    # source data is projected as the classifier was trained (X_a), not as target data (X_T)
    source_val_accuracy = (alignment.predict(source[500:], "source") == labels[500:]).mean()
    assert source_val_accuracy == alignment.validation_accuracy[alignment.selected_dimension]
    by_size = alignment.accuracy_by_dimension(target, target_labels)
    assert set(by_size) == {2, 3, 5}
    assert by_size[alignment.selected_dimension] == (alignment.predict(target)
                                                     == target_labels).mean()
    with pytest.raises(ValueError, match="dimension 4"):
        alignment.predict(target, dimension=4)
    assert alignment.not_converged == []
    saved = SubspaceAlignment.from_state_dict(alignment.state_dict())  # as a run reads it back
    for data, domain in ((target, "target"), (source, "source")):
        np.testing.assert_array_equal(saved.predict(data, domain), alignment.predict(data, domain))
        np.testing.assert_array_equal(saved.project(data, domain), alignment.project(data, domain))
    with pytest.warns(ConvergenceWarning, match=r"sizes \[2, 3, 5\]") as caught:
        SubspaceAlignment(candidate_dimensions=(2, 3, 5), max_iter=1).fit(
            source[:500], labels[:500], target, source[500:], labels[500:])
    assert len(caught) == 1  # one warning for the fit, not one per size


def test_subspace_alignment_defaults_to_the_papers_sizes_and_breaks_ties_small():
    from transferkit.methods.subspace_alignment import PAPER_DIMENSIONS

    assert tuple(range(2, 61)) == PAPER_DIMENSIONS
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    source = rng.normal(0, 1, (200, 6))
    source[:, :3] += 8 * labels[:, None]  # the first principal axis separates the classes
    alignment = SubspaceAlignment(candidate_dimensions=(4, 2, 3), seed=0)
    alignment.fit(source, labels, source + 1.0, source, labels)
    assert set(alignment.validation_accuracy.values()) == {1.0}
    assert alignment.selected_dimension == 2


def test_hidden_is_the_label_predictors_input_to_its_last_layer():
    from transferkit.models import DigitNetwork

    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10).eval()
    images = torch.randn(4, 3, 28, 28)
    hidden = network.hidden(images)
    assert hidden.shape == (4, 100) and bool((hidden >= 0).all())  # after the ReLU
    torch.testing.assert_close(network.label_predictor[-1](hidden), network(images))


def test_dann_domain_loss_is_the_joint_mean_or_the_sum_of_the_domain_means():
    import torch.nn.functional as F

    from transferkit.methods import DANN

    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10, 28)
    source, target = torch.randn(4, 3, 28, 28), torch.randn(6, 3, 28, 28)
    with torch.no_grad():
        source_logits = network.domain_classifier(network.features(source))
        target_logits = network.domain_classifier(network.features(target))
        source_losses = F.binary_cross_entropy_with_logits(
            source_logits, torch.zeros(4, 1), reduction="none")
        target_losses = F.binary_cross_entropy_with_logits(
            target_logits, torch.ones(6, 1), reduction="none")
    joint = DANN(network).losses(source, torch.arange(4), target, progress=0.5)
    torch.testing.assert_close(joint["domain_loss"],
                               torch.cat([source_losses, target_losses]).mean())
    summed = DANN(network, domain_loss="sum").losses(source, torch.arange(4), target, 0.5)
    torch.testing.assert_close(summed["domain_loss"],
                               source_losses.mean() + target_losses.mean())
    assert joint["grl_coefficient"] == pytest.approx(grl_coefficient(0.5))
    with pytest.raises(ValueError, match="domain_loss"):
        DANN(network, domain_loss="max")


def test_dann_feature_gradient_is_class_gradient_minus_lambda_domain_gradient():
    import torch.nn.functional as F

    from transferkit.methods import DANN

    torch.manual_seed(0)
    method = DANN(DigitNetwork("mnist", 10, 28))
    network = method.network
    source, target, labels = torch.randn(4, 3, 28, 28), torch.randn(4, 3, 28, 28), torch.arange(4)
    weight = network.features[0].weight

    def gradient(loss):
        return torch.autograd.grad(loss, weight)[0]

    features = network.features(torch.cat([source, target]))
    class_grad = gradient(F.cross_entropy(network.label_predictor(features[:4]), labels))
    features = network.features(torch.cat([source, target]))
    logits = network.domain_classifier(features).squeeze(1)
    domain = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.zeros(4),
                                                                   torch.ones(4)]))
    domain_grad = gradient(domain)
    total_grad = gradient(method.losses(source, labels, target, progress=0.3)["loss"])
    torch.testing.assert_close(total_grad, class_grad - grl_coefficient(0.3) * domain_grad)


def test_weight_average_is_the_exponential_moving_average_of_the_steps():
    from transferkit.training.loop import weight_average

    model = torch.nn.Linear(3, 2)
    average = weight_average(model, decay=0.9)
    seen = []
    for value in (1.0, 2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update_parameters(model)
        seen.append(value)
    expected = seen[0]  # the first update copies the weights
    for value in seen[1:]:
        expected = 0.9 * expected + 0.1 * value
    assert torch.allclose(average.module.weight, torch.full((2, 3), expected))
    assert float(model.weight[0, 0].detach()) == 4.0  # the trained weights are left alone
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        weight_average(model, decay=1.0)


def test_weight_average_resumed_from_its_state_dict_continues_the_same_average():
    """The average counts its steps on the host (no device wait per step); a copy loaded
    from a state dict must read that count back, not restart by copying the weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from transferkit.training.loop import weight_average

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    steps = [{k: torch.randn_like(v) for k, v in model.state_dict().items()
              if v.is_floating_point()} for _ in range(5)]
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    ours = weight_average(model, decay=0.8)
    for number, values in enumerate(steps):
        model.load_state_dict(values, strict=False)
        if number == 2:  # interrupted: a fresh average from the saved state carries on
            saved = ours.state_dict()
            ours = weight_average(torch.nn.Sequential(torch.nn.Linear(3, 4),
                                                      torch.nn.BatchNorm1d(4)), decay=0.8)
            ours.load_state_dict(saved)
        reference.update_parameters(model)
        ours.update_parameters(model)
    for name, value in reference.state_dict().items():
        assert torch.allclose(ours.state_dict()[name], value.to(ours.state_dict()[name].dtype)), name
    assert int(ours.n_averaged) == 5


def _mcc_by_the_formula(logits: torch.Tensor, temperature: float) -> float:
    """Minimum Class Confusion (Jin et al. 2020, eq. 1-6), one element at a time."""
    batch, classes = logits.shape
    p = torch.softmax(logits.double() / temperature, dim=1)
    entropy = [-sum(float(p[i, j]) * math.log(float(p[i, j])) for j in range(classes))
               for i in range(batch)]
    raw = [1 + math.exp(-h) for h in entropy]
    w = [batch * r / sum(raw) for r in raw]
    c = [[sum(float(p[i, j]) * w[i] * float(p[i, k]) for i in range(batch))
          for k in range(classes)] for j in range(classes)]
    column = [sum(c[j][k] for j in range(classes)) for k in range(classes)]
    return sum(c[j][k] / column[k] for j in range(classes) for k in range(classes)
               if j != k) / classes


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_minimum_class_confusion_matches_its_formula(temperature):
    from transferkit.methods.mcc import minimum_class_confusion

    torch.manual_seed(0)
    logits = 3 * torch.randn(7, 5)
    assert float(minimum_class_confusion(logits, temperature)) == pytest.approx(
        _mcc_by_the_formula(logits, temperature), rel=1e-5)


def test_minimum_class_confusion_is_low_for_certain_distinct_classes_and_high_for_uniform():
    from transferkit.methods.mcc import minimum_class_confusion

    uniform = torch.zeros(8, 10)
    assert float(minimum_class_confusion(uniform)) == pytest.approx(0.9)  # 1 − trace/C, C = 10
    certain = 50.0 * torch.eye(10)[torch.arange(8) % 10]  # 8 images, 8 classes, no doubt
    assert float(minimum_class_confusion(certain, temperature=1.0)) < 1e-6
    huge = 1e4 * torch.eye(10)[:3]  # classes no image chooses: zero columns, no NaN
    assert torch.isfinite(minimum_class_confusion(huge, temperature=1.0))
    with pytest.raises(ValueError, match="B × C"):
        minimum_class_confusion(torch.zeros(5))


def test_dann_mcc_is_danns_loss_plus_the_confusion_of_the_target_batch():
    from transferkit.methods import DANN, DANNMCC
    from transferkit.methods.mcc import MCC_TEMPERATURE, minimum_class_confusion

    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10, 28)
    source, target, labels = torch.randn(4, 3, 28, 28), torch.randn(6, 3, 28, 28), torch.arange(4)
    dann = DANN(network).losses(source, labels, target, progress=0.4)
    both = DANNMCC(network).losses(source, labels, target, progress=0.4)
    with torch.no_grad():
        confusion = minimum_class_confusion(network(target), MCC_TEMPERATURE)
    torch.testing.assert_close(both["mcc_loss"], confusion)
    torch.testing.assert_close(both["domain_loss"], dann["domain_loss"])
    torch.testing.assert_close(both["loss"], dann["loss"] + confusion)
    # the confusion term reaches the feature extractor through the target images
    weight = network.features[0].weight
    gradient = torch.autograd.grad(both["loss"] - dann["loss"], weight)[0]
    assert float(gradient.abs().sum()) > 0


def test_cdan_entropy_weights_favor_sure_images_and_average_one_per_domain():
    from transferkit.methods.cdan import entropy_weights

    sure, unsure = torch.eye(4)[0], torch.full((4,), 0.25)
    probabilities = torch.stack([sure, unsure, unsure, sure, unsure])  # 2 source, 3 target
    weights = entropy_weights(probabilities.requires_grad_(), sources=2)
    assert not weights.requires_grad
    torch.testing.assert_close(weights[:2].mean(), torch.tensor(1.0))
    torch.testing.assert_close(weights[2:].mean(), torch.tensor(1.0))
    assert weights[0] > weights[1] and weights[3] > weights[2]
    # 1 + e^0 = 2 for a certain image, 1 + e^(−ln 4) = 1.25 for a uniform one
    torch.testing.assert_close(weights[0] / weights[1], torch.tensor(2.0 / 1.25))


def test_cdan_conditions_the_domain_classifier_on_features_and_predictions():
    from transferkit.methods import CDAN
    from transferkit.methods.cdan import RANDOMIZED_DIM

    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10, 28)  # 768 features × 10 classes > 4096: randomized map
    cdan = CDAN(network)
    assert cdan.randomized and network.domain_classifier[0].in_features == RANDOMIZED_DIM
    features, probabilities = torch.rand(5, 768), torch.softmax(torch.randn(5, 10), dim=1)
    expected = ((features @ cdan.feature_projection) * (probabilities @ cdan.class_projection)
                / RANDOMIZED_DIM ** 0.5)
    torch.testing.assert_close(cdan.condition(features, probabilities), expected)
    # the map is bilinear: doubling the features doubles it, and it is the outer product
    # f ⊗ g projected, so it vanishes with either factor
    torch.testing.assert_close(cdan.condition(2 * features, probabilities), 2 * expected)
    assert float(cdan.condition(features, torch.zeros(5, 10)).abs().max()) == 0.0

    small = DigitNetwork("mnist", 3, 28)  # 768 × 3 ≤ 4096: the full map f ⊗ g
    full = CDAN(small)
    assert not full.randomized and small.domain_classifier[0].in_features == 768 * 3
    g = torch.tensor([[0.2, 0.3, 0.5]])
    f = torch.arange(768.0)[None]
    torch.testing.assert_close(full.condition(f, g), torch.outer(g[0], f[0]).flatten()[None])


def test_cdan_trains_only_the_feature_extractor_adversarially():
    """The predictions that condition the domain classifier are constants: the label
    predictor's gradient is the class loss's alone, while the features get the reversed
    domain gradient too."""
    from transferkit.methods import CDAN

    torch.manual_seed(0)
    cdan = CDAN(DigitNetwork("mnist", 10, 28))
    network = cdan.network
    source, target, labels = torch.randn(6, 3, 28, 28), torch.randn(6, 3, 28, 28), torch.arange(6)
    values = cdan.losses(source, labels, target, progress=0.5)
    predictor = list(network.label_predictor.parameters())
    conv = network.features[0].weight
    total = torch.autograd.grad(values["loss"], [*predictor, conv])
    features = network.features(torch.cat([source, target]))
    class_loss = F.cross_entropy(network.label_predictor(features)[:6], labels)
    alone = torch.autograd.grad(class_loss, [*predictor, conv])
    for got, want in zip(total[:-1], alone[:-1], strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(total[-1], alone[-1])
    assert 0.0 <= float(values["domain_accuracy"]) <= 1.0


def test_vada_radius_matches_the_authors_share_of_the_pixel_range():
    from transferkit.methods import VADA
    from transferkit.methods.vada import matched_radius

    assert matched_radius(32 * 32 * 3, pixel_range=2.0) == pytest.approx(3.5)
    assert matched_radius(32 * 32 * 3) == pytest.approx(1.75)
    assert matched_radius(28 * 28 * 3) == pytest.approx(1.75 * (2352 / 3072) ** 0.5)
    assert VADA(DigitNetwork("mnist", 10, 28)).radius == pytest.approx(matched_radius(2352))
    with pytest.raises(ValueError):
        matched_radius(0)


def test_conditional_entropy_is_ln_classes_when_uniform_and_zero_when_certain():
    from transferkit.methods.vada import conditional_entropy

    assert float(conditional_entropy(torch.zeros(5, 10))) == pytest.approx(math.log(10))
    assert float(conditional_entropy(1e4 * torch.eye(10)[:3])) == pytest.approx(0.0, abs=1e-6)


def test_the_virtual_adversarial_direction_changes_the_prediction_more_than_random_ones():
    from transferkit.methods.vada import virtual_adversarial_divergence

    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    images = torch.randn(8, 3, 4, 4)
    logits = classifier(images)
    adversarial = virtual_adversarial_divergence(classifier, images, logits, radius=0.5)
    assert adversarial.shape == (8,)
    with torch.no_grad():
        p = torch.softmax(logits, 1)
        strongest_random = torch.zeros(8)
        for _ in range(50):
            r = torch.randn_like(images)
            r = 0.5 * r / r.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            log_q = torch.log_softmax(classifier(images + r), 1)
            kl = (p * (torch.log(p) - log_q)).sum(1)
            strongest_random = torch.maximum(strongest_random, kl)
    # the classifier's KL Hessian has rank 4 in 48 dimensions: one power iteration lands in
    # that subspace, a random direction keeps ~1/12 of its length there. Measured: 1.7-4.0×
    # the strongest of 50 random directions over seeds 0-4; asserted: 1.3×.
    assert bool((adversarial > 1.3 * strongest_random).all())
    # p(x) is a constant: the weights get gradient only through p(x + r)
    weight_gradient = torch.autograd.grad(adversarial.sum(), classifier[1].weight)[0]
    assert float(weight_gradient.abs().sum()) > 0
    unmoved = virtual_adversarial_divergence(classifier, images, logits, radius=0.0)
    assert float(unmoved.detach().abs().max()) < 1e-6


def test_the_adversarial_direction_survives_float32_rounding():
    """The power iteration in float32 agrees with a float64 finite-difference reference on
    inputs of size ~1; the authors' ξ = 1e-6 finite difference in float32 does not (most of
    its probe is rounded away) — the defect of issue 20."""
    from transferkit.methods.vada import XI, adversarial_direction, probe_share_changed

    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 5))
    images = torch.rand(16, 3, 4, 4)  # pixel-like values in [0, 1)
    start = torch.randn(images.shape, dtype=torch.float64)
    reference_net = copy.deepcopy(smooth).double()
    reference = adversarial_direction(reference_net, images.double(),
                                      reference_net(images.double()), XI, start)
    exact = adversarial_direction(smooth, images, smooth(images), None, start.float())
    cosine = (exact.double() * reference).flatten(1).sum(1)
    assert float(cosine.min()) > 0.999  # measured 0.99999990 or closer over seeds 0-4
    assert probe_share_changed(images, XI, start.float()) < 0.95  # measured 0.88-0.90
    finite_difference = adversarial_direction(smooth, images, smooth(images), XI, start.float())
    lost = (finite_difference.double() * reference).flatten(1).sum(1)
    assert float(lost.mean()) < 0.9  # measured 0.34-0.49: not the direction H d


def test_softmax_hessian_product_is_the_kl_hessian_and_keeps_precision_when_certain():
    from transferkit.methods.vada import softmax_hessian_product

    logits = torch.tensor([[1.0, 2.0, 3.0], [30.0, 0.0, -5.0]], dtype=torch.float64)
    vectors = torch.tensor([[0.3, -0.1, 0.2], [1.0, -2.0, 0.5]], dtype=torch.float64)
    p = torch.softmax(logits, 1)
    # the Hessian of z ↦ KL(p ‖ softmax(z)) at z = log p, in float64, for the first row (on
    # the second, autograd's own float64 Hessian cancels to 2e-4 relative)
    hessian = torch.autograd.functional.hessian(
        lambda z: (p[0] * (p[0].log() - torch.log_softmax(z, 0))).sum(), logits[0])
    torch.testing.assert_close(softmax_hessian_product(p[:1], vectors[:1])[0], hessian @ vectors[0],
                               rtol=1e-9, atol=1e-30)
    # float32 against float64: the nearly one-hot row keeps its relative precision, where
    # p ∘ v − p (p · v) in float32 cancels to noise (relative error ~1 there)
    p32, v32 = torch.softmax(logits.float(), 1), vectors.float()
    expected = softmax_hessian_product(p, vectors)
    torch.testing.assert_close(softmax_hessian_product(p32, v32).double(), expected, rtol=1e-4, atol=0.0)
    naive = (p32 * v32 - p32 * (p32 * v32).sum(1, keepdim=True)).double()
    assert float(((naive[1] - expected[1]) / expected[1]).abs().max()) > 0.1


def test_vada_is_danns_loss_plus_the_cluster_terms():
    from transferkit.methods import DANN, VADA
    from transferkit.methods.vada import (
        SOURCE_WEIGHT,
        TARGET_WEIGHT,
        conditional_entropy,
        virtual_adversarial_divergence,
    )

    torch.manual_seed(0)
    network = DigitNetwork("mnist", 10, 28)
    source, target, labels = torch.randn(4, 3, 28, 28), torch.randn(6, 3, 28, 28), torch.arange(4)
    dann = DANN(network).losses(source, labels, target, progress=0.4)
    torch.manual_seed(1)
    vada = VADA(network).losses(source, labels, target, progress=0.4)
    joint = torch.cat([source, target])
    torch.manual_seed(1)
    divergence = virtual_adversarial_divergence(network, joint, network(joint),
                                                VADA(network).radius)
    entropy = conditional_entropy(network(target))
    torch.testing.assert_close(vada["target_entropy"], entropy.detach())
    torch.testing.assert_close(vada["source_vat"], divergence[:4].mean().detach())
    torch.testing.assert_close(vada["target_vat"], divergence[4:].mean().detach())
    expected = dann["loss"] + SOURCE_WEIGHT * divergence[:4].mean() + TARGET_WEIGHT * (
        entropy + divergence[4:].mean())
    torch.testing.assert_close(vada["loss"], expected)
    torch.testing.assert_close(vada["domain_loss"], dann["domain_loss"])
