"""Set-ups of the objective families whose synthetic set needs more than pixels from ``init``: trajectory
matching (expert buffer, learnable student lr), the kernel / meta-model methods (learnable labels, ZCA,
float64 solve) and BPTT (learnable inner lr, label learning). Signatures as :func:`registry.setup_pixels`."""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxdistill import objectives, synthetic
from jaxdistill.methods.registry import Built


def trajectory(options, data, obj_cfg, init: str, key) -> Built:
  """MTT / TESLA: the objective on the ``buffer`` trajectories (metadata checked against the dataset, network and
  ZCA setting; a mismatch is refused) and a pixel set with a learnable student lr ``α₀`` (stored with the set and
  used by evaluation); TESLA's ``soft_labels`` come from an expert."""
  from jaxdistill.objectives import trajectory_matching as tm

  spec = data.spec
  if not obj_cfg.buffer:
    raise ValueError(f"--method {options.method} needs --buffer DIR (an expert buffer from "
                     "`python -m experiments.buffers`).")
  if obj_cfg.zca:
    raise ValueError("zca=True: this CLI loads un-whitened data; distil ZCA buffers from Python with "
                     "ZCA-whitened images (jaxdistill.experts.prepare_images).")
  obj_cfg = dataclasses.replace(obj_cfg, dataset=options.dataset)
  objective = tm.make_trajectory_matching(obj_cfg, num_classes=spec.num_classes, image_shape=spec.image_shape,
                                          ipc=options.ipc, name=options.method)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, options.ipc,
                              learn_lr=obj_cfg.lr_init)
  if obj_cfg.soft_labels:
    soft = tm.soft_labels_from_buffer(obj_cfg, syn.params["images"], spec.num_classes, spec.image_shape)
    syn = syn._replace(const={**syn.const, "labels": soft})
  return Built(objective, synthetic.PIXELS, syn)


def kernel(options, data, obj_cfg, init: str, key) -> Built:
  """KIP / RFAD / FRePo: a pixel set with learnable soft labels when ``learn_labels`` (``label_scale · one_hot``
  at init; FRePo's centred, KIP / RFAD's centred when ``centre_labels``); KIP on RGB data with ``zca`` gets a ZCA
  transform fitted on (up to 10 000) training images, applied inside its kernel. KIP / RFAD with
  ``dtype="float64"`` ask for ``jax_enable_x64`` during the distillation (``Built.x64``; the images and data stay
  float32)."""
  spec = data.spec
  method = options.method
  zca = None
  if method == "kip" and obj_cfg.zca and spec.image_shape[-1] == 3:
    from jaxdistill.data.zca import fit_zca
    zca = fit_zca(data.train_x[:10000], obj_cfg.zca_reg, relative=True)
  kwargs = {"zca": zca} if zca is not None else {}
  factory = objectives.REGISTRY[method].factory
  objective = factory(obj_cfg, num_classes=spec.num_classes, image_shape=spec.image_shape, ipc=options.ipc,
                      name=method, **kwargs)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, options.ipc,
                              learn_labels=obj_cfg.learn_labels, label_scale=obj_cfg.label_scale)
  if method == "frepo":  # FRePo's centred (and for K != 10 scaled) initial labels
    syn = objectives.frepo.centre_labels(syn, spec.num_classes, obj_cfg.label_scale)
    return Built(objective, synthetic.PIXELS, syn)
  if method not in ("kip", "rfad"):
    return Built(objective, synthetic.PIXELS, syn)
  if obj_cfg.centre_labels and "labels" in syn.params:  # label_scale · (one_hot − 1/C): KIP.ipynb, RFAD's code
    labels = syn.params["labels"] - obj_cfg.label_scale / spec.num_classes
    syn = syn._replace(params={**syn.params, "labels": labels})
  return Built(objective, synthetic.PIXELS, syn, x64=obj_cfg.dtype == "float64", context=(data, obj_cfg, zca))


def kip_outputs(options, built: Built, syn_state):
  """KIP's own evaluation beside the finite networks: the KRR test accuracy of the final set with its kernel on
  ``krr_test_size`` test images (0: all), as metadata ``krr_test_accuracy`` / ``krr_test_size``."""
  data, obj_cfg, zca = built.context
  batch = built.param.render(syn_state)
  n = int(obj_cfg.krr_test_size) or len(data.test_y)
  acc = objectives.kip.krr_test_accuracy(obj_cfg, np.asarray(batch.images, np.float32), np.asarray(batch.labels),
                                         data.test_x[:n], data.test_y[:n], data.spec.num_classes, zca=zca)
  print(f"kip ipc={options.ipc}: KRR test accuracy {acc:.4f} ({n} test images)")
  return None, {"krr_test_accuracy": float(acc), "krr_test_size": n}


def bptt(options, data, obj_cfg, init: str, key) -> Built:
  """DD / LD (BPTT, :mod:`jaxdistill.objectives.bptt`): DD learns pixels (and the inner lr α, initialised to
  ``inner_lr``, and soft labels with ``learn_labels``); LD learns the soft labels of fixed real base images
  (``labels_only``), with α learned only when ``learn_lr`` is set. Learned labels are projected as
  ``label_projection`` says (LD: onto the simplex, as LD's code)."""
  from jaxdistill.synthetic.labels import initial_labels

  spec = data.spec
  objective = objectives.make_objective(options.method, obj_cfg, num_classes=spec.num_classes,
                                        image_shape=spec.image_shape, ipc=options.ipc)
  lr = obj_cfg.initial_lr()  # DD: T raw rates, alpha_t = softplus(raw_t) (None when alpha is not learned)
  if options.method == "ld":
    syn = synthetic.init_labels(key, init, data.train_x, data.train_y, spec.num_classes, options.ipc,
                                label_scale=obj_cfg.label_scale, label_start=obj_cfg.label_start, learn_lr=lr)
    return Built(objective, synthetic.labels_only(obj_cfg.label_projection), syn)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, options.ipc, learn_lr=lr)
  if obj_cfg.learn_labels:
    labels = initial_labels(syn.const["labels"], spec.num_classes, obj_cfg.label_start, obj_cfg.label_scale)
    syn = syn._replace(params={**syn.params, "labels": labels})
    return Built(objective, synthetic.PIXELS._replace(project=synthetic.label_projection(obj_cfg.label_projection)),
                 syn)
  return Built(objective, synthetic.PIXELS, syn)
