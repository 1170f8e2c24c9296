//! The day protocol end to end: each class of defect the simulation reproduced, through
//! the binary against real servers.
