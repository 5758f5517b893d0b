// shape-trap: a tiny release executable that commits a programmer error on purpose. Release
// builds keep their preconditions (no -Ounchecked), so it must die by the trap's signal — never
// read or write out of bounds and carry on. Run by ReleaseTrapTests.
//   shape-trap shape   a Conv3D forward with x of the wrong shape
//   shape-trap index   a Tensor read one past its end
import Flipout3D
import Foundation

let g = Conv3DGeometry(batch: 1, inChannels: 2, outChannels: 2, size: 4, k: 3)
let x = Tensor(shape: [1, 2, 4, 4, 3])   // (N, C, D, H, W) with W = 3, not 4
switch CommandLine.arguments.dropFirst().first {
case "shape":
    let conv = try Conv3D(g)
    _ = try conv.forward(x: x, w: Tensor(shape: g.weightShape), bias: nil, y: Tensor(shape: g.yShape))
case "index":
    print(x[x.count])
default:
    print("usage: shape-trap shape|index")
    exit(64)
}
print("no trap")
